package agent

import (
	"context"
	"fmt"
	"time"

	"go.uber.org/zap"

	"github.com/immutd/immutd/internal/traffic"
	"github.com/immutd/immutd/internal/traffic/consul"
)

// Agents announce themselves in Consul as members of this pseudo-fleet:
// a name no fleet can have (fleet names have no dots), so no fleet's
// Consul backend ever owns these registrations.
const consulAgentsFleet = "immutd.agents"

// consulAnnounceEvery is how often an agent refreshes its registration's
// TTL check (its TTL is 30s).
const consulAnnounceEvery = 10 * time.Second

// consulJoin is cluster { join_consul { ... } }: this agent's registration
// in Consul (its cluster address, tag "raft"), and the lookup of the
// others' while there is no leader.
type consulJoin struct {
	b       *consul.Backend
	service string
	self    traffic.Member
	log     *zap.Logger
}

// newConsulJoin checks the join_consul settings and reads its token; the
// agent's own member is set once the node is open (see announce). It is
// nil without join_consul.
func (a *Agent) newConsulJoin() (*consulJoin, error) {
	j := a.cfg.Cluster.JoinConsul
	if j == nil {
		return nil, nil
	}
	b, err := consul.New(consul.Config{Address: j.Address, Service: j.Service, Fleet: consulAgentsFleet, Tags: []string{"raft"},
		Meta: map[string]string{"node_name": a.cfg.NodeName}, TokenFile: j.TokenFile, CAFile: j.CAFile, CertFile: j.CertFile, KeyFile: j.KeyFile,
		TLSServerName: j.TLSServerName}, a.log.Named("consul-join"))
	if err != nil {
		return nil, fmt.Errorf("join_consul: %w", err)
	}
	return &consulJoin{b: b, service: j.Service, log: a.log.Named("consul-join")}, nil
}

// setSelf names the member this agent announces: its node id and cluster
// address.
func (c *consulJoin) setSelf(id, addr string) {
	c.self = traffic.Member{Fleet: consulAgentsFleet, InstanceID: id, Address: addr, Version: Version, Healthy: true}
}

// announceInConsul announces this agent in Consul with join_consul, until
// ctx ends.
func (a *Agent) announceInConsul(ctx context.Context) error {
	if a.consulJoin == nil {
		return nil
	}
	a.consulJoin.setSelf(a.node.ID(), a.node.LocalAddr())
	return a.consulJoin.announce(ctx)
}

// announce keeps this agent registered, passing, until ctx ends; then it
// deregisters it. A Consul that cannot be reached is retried: the
// cluster itself does not need Consul once it is formed.
func (c *consulJoin) announce(ctx context.Context) error {
	defer func() {
		dctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := c.b.Drain(dctx, c.self); err != nil {
			c.log.Warn("could not deregister this agent from Consul", zap.Error(err))
		}
		_ = c.b.Close()
	}()
	failing := false
	t := time.NewTicker(consulAnnounceEvery)
	defer t.Stop()
	for {
		// Sync registers this agent if it is missing and refreshes its
		// check; keep knows everything, so it never removes another
		// agent's registration.
		sctx, cancel := context.WithTimeout(ctx, consulAnnounceEvery)
		err := c.b.Sync(sctx, []traffic.Member{c.self}, func(string) bool { return true })
		cancel()
		switch {
		case ctx.Err() != nil:
			return nil
		case err != nil && !failing:
			c.log.Warn("could not announce this agent in Consul; retrying", zap.Error(err))
		case err == nil && failing:
			c.log.Info("announced in Consul again")
		}
		failing = err != nil
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// peers are the cluster addresses the Consul catalog lists for the
// agents' service, this agent's own excepted.
func (c *consulJoin) peers(ctx context.Context) ([]string, error) {
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	addrs, err := c.b.CatalogAddresses(cctx, c.service, "raft")
	if err != nil {
		return nil, err
	}
	out := addrs[:0]
	for _, addr := range addrs {
		if addr != c.self.Address {
			out = append(out, addr)
		}
	}
	return out, nil
}
