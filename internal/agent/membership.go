package agent

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/raft"
	autopilot "github.com/hashicorp/raft-autopilot"
	"go.uber.org/zap"

	"github.com/immutd/immutd/internal/api"
	"github.com/immutd/immutd/internal/config"
)

// Membership: forming a cluster (bootstrap_expect + join), joining an
// existing one, leaving, removing servers, and autopilot (promotion of new
// servers once they are stable, cleanup of dead ones) on the leader.

// JoinRequest asks the leader to add a server.
type JoinRequest struct {
	ID   string `json:"id"`
	Name string `json:"name"`
	Addr string `json:"addr"`
}

// ServerStats is what autopilot needs to judge a server's health.
type ServerStats struct {
	LastContactMS int64  `json:"last_contact_ms"`
	LastTerm      uint64 `json:"last_term"`
	LastIndex     uint64 `json:"last_index"`
	Name          string `json:"name"`
}

// info describes this agent to a peer.
func (a *Agent) info() NodeInfo {
	leader, _ := a.node.Leader()
	st := a.node.Stats()
	hasState := a.node.HadState() || st["last_log_index"] != "0" && st["last_log_index"] != ""
	return NodeInfo{ID: a.node.ID(), Name: a.cfg.NodeName, RaftAddr: a.node.LocalAddr(), HasState: hasState, Leader: leader,
		BootstrapExpect: a.cfg.Cluster.BootstrapExpect, Version: Version}
}

// clusterRPC adds the membership endpoints to the agent-to-agent mux.
func (a *Agent) clusterRPC(mux *http.ServeMux) {
	mux.HandleFunc("GET /cluster/v1/stats", a.rpcGet(false, func(ctx context.Context) (any, error) {
		st := a.node.Stats()
		term, _ := strconv.ParseUint(st["last_log_term"], 10, 64)
		idx, _ := strconv.ParseUint(st["last_log_index"], 10, 64)
		lc := int64(0)
		if !a.node.IsLeader() {
			lc = time.Since(a.node.LastContact()).Milliseconds()
		}
		return ServerStats{LastContactMS: lc, LastTerm: term, LastIndex: idx, Name: a.cfg.NodeName}, nil
	}))
	// A join is forwarded to the leader by addServer itself.
	mux.HandleFunc("POST /cluster/v1/join", rpcPost(a, false, maxSmallBody, func(ctx context.Context, req *JoinRequest) (any, error) {
		return struct{}{}, a.addServer(ctx, *req)
	}))
	mux.HandleFunc("POST /cluster/v1/remove", rpcPost(a, true, maxSmallBody, func(ctx context.Context, req *removeRequest) (any, error) {
		return struct{}{}, conflict(a.RemoveMember(ctx, req.Node))
	}))
	mux.HandleFunc("GET /cluster/v1/members", a.rpcGet(true, func(ctx context.Context) (any, error) {
		return a.Members(ctx)
	}))
}

// removeRequest names a server (by id or name) to remove.
type removeRequest struct {
	Node string `json:"node"`
}

// Checks of membership input: server ids are what nodeID makes (hex),
// or any other short name of letters, digits, '-', '_' and '.'.
var serverIDRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

func (r JoinRequest) check() error {
	switch {
	case !serverIDRE.MatchString(r.ID):
		return fmt.Errorf("join: id %.80q is not a server id", r.ID)
	case config.CheckDialAddr(r.Addr) != nil:
		return fmt.Errorf("join: addr: %v", config.CheckDialAddr(r.Addr))
	case r.Name != "" && config.CheckNodeName(r.Name) != nil:
		return fmt.Errorf("join: name: %v", config.CheckNodeName(r.Name))
	case len(r.Name) > maxNodeNameLen:
		return fmt.Errorf("join: name is longer than %d bytes", maxNodeNameLen)
	}
	return nil
}

// addServer adds a server on the leader, or forwards the request to it.
// A known address under a new id (a wiped and re-installed node) replaces
// the stale entry.
func (a *Agent) addServer(ctx context.Context, req JoinRequest) error {
	if err := req.check(); err != nil {
		return rpcFail(http.StatusBadRequest, "%v", err)
	}
	return a.onLeader(ctx, http.MethodPost, "/cluster/v1/join", req, nil, func() error { return a.addServerHere(req) })
}

// addServerHere adds a server (leader only).
func (a *Agent) addServerHere(req JoinRequest) error {
	servers, err := a.node.Servers()
	if err != nil {
		return err
	}
	for _, s := range servers {
		switch {
		case string(s.ID) == req.ID && string(s.Address) == req.Addr:
			return nil
		case string(s.ID) == req.ID || string(s.Address) == req.Addr:
			a.log.Warn("replacing a stale server entry", zap.String("node_id", string(s.ID)), zap.String("address", string(s.Address)),
				zap.String("new_node_id", req.ID), zap.String("new_address", req.Addr))
			if err := a.node.RemoveServer(string(s.ID)); err != nil {
				return fmt.Errorf("remove stale server %s: %w", s.ID, err)
			}
		}
	}
	// Join as a non-voter; autopilot promotes it once it is stable, so a
	// joining server never weakens the quorum while it catches up.
	if err := a.node.AddNonvoter(req.ID, req.Addr); err != nil {
		return fmt.Errorf("add server %s: %w", req.ID, err)
	}
	a.names.set(req.ID, req.Name)
	a.log.Info("server joined", zap.String("node_id", req.ID), zap.String("node", req.Name), zap.String("address", req.Addr))
	return nil
}

// RemoveMember removes a server by id or name (leader; followers forward).
func (a *Agent) RemoveMember(ctx context.Context, node string) error {
	if !serverIDRE.MatchString(node) && config.CheckNodeName(node) != nil {
		return fmt.Errorf("%.80q is neither a server id nor a node name", node)
	}
	return a.onLeader(ctx, http.MethodPost, "/cluster/v1/remove", removeRequest{Node: node}, nil, func() error { return a.removeHere(node) })
}

// removeHere removes a server by id or name (leader only).
func (a *Agent) removeHere(node string) error {
	servers, err := a.node.Servers()
	if err != nil {
		return err
	}
	for _, s := range servers {
		if string(s.ID) == node || a.nameOf(string(s.ID)) == node {
			if string(s.ID) == a.node.ID() {
				return errors.New("this agent leads: run `immutd cluster leave` on it, or remove it from another agent after a leadership change")
			}
			a.log.Info("removing server", zap.String("node_id", string(s.ID)), zap.String("node", node))
			return a.node.RemoveServer(string(s.ID))
		}
	}
	return fmt.Errorf("no server %q in the cluster", node)
}

// Members lists the servers with autopilot's health view (leader; a
// follower forwards).
func (a *Agent) Members(ctx context.Context) ([]api.Member, error) {
	var ms []api.Member
	err := a.onLeader(ctx, http.MethodGet, "/cluster/v1/members", nil, &ms, func() (err error) {
		ms, err = a.membersHere()
		return err
	})
	return ms, err
}

// membersHere lists the servers (leader only).
func (a *Agent) membersHere() ([]api.Member, error) {
	servers, err := a.node.Servers()
	if err != nil {
		return nil, err
	}
	var ap *autopilot.State
	if p := a.pilot(); p != nil {
		ap = p.GetState()
	}
	var out []api.Member
	for _, s := range servers {
		m := api.Member{ID: string(s.ID), Name: a.nameOf(string(s.ID)), Address: string(s.Address), Suffrage: suffrage(s.Suffrage),
			Leader: string(s.ID) == a.node.ID()}
		if ap != nil {
			if ss := ap.Servers[s.ID]; ss != nil {
				h := ss.Health.Healthy
				m.Healthy = &h
				m.LastContact = ss.Stats.LastContact.String()
				m.LastIndex = ss.Stats.LastIndex
			}
		}
		out = append(out, m)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

func suffrage(s raft.ServerSuffrage) string {
	switch s {
	case raft.Voter:
		return "voter"
	case raft.Nonvoter:
		return "nonvoter"
	default:
		return "staging"
	}
}

// Leave removes this agent from the cluster, then stops it: a server that
// left has nothing more to do.
func (a *Agent) Leave(ctx context.Context) error {
	if err := a.leaveCluster(ctx); err != nil {
		return err
	}
	a.stopOnce.Do(func() { close(a.stop) })
	return nil
}

// leaveCluster removes this agent from the cluster (handing leadership
// over first when it leads).
func (a *Agent) leaveCluster(ctx context.Context) error {
	if a.node.IsLeader() {
		if err := a.node.LeadershipTransfer(); err != nil {
			return fmt.Errorf("leave: hand leadership over: %w", err)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := a.forward(ctx, http.MethodPost, "/cluster/v1/remove", removeRequest{Node: a.node.ID()}, nil)
		if err == nil {
			a.log.Info("left the cluster")
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("leave: %w", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// JoinVia asks the agent at addr (a cluster address) to add this agent.
func (a *Agent) JoinVia(ctx context.Context, addr string) error {
	if err := config.CheckDialAddr(addr); err != nil {
		return fmt.Errorf("join: %v", err)
	}
	req := JoinRequest{ID: a.node.ID(), Name: a.cfg.NodeName, Addr: a.node.LocalAddr()}
	return a.callPeer(ctx, addr, http.MethodPost, "/cluster/v1/join", req, nil)
}

// formCluster runs on an agent of a multi-agent cluster that has no raft
// state: it joins an existing cluster if any peer has one, and otherwise
// bootstraps a new one together with the other bootstrap_expect-1 peers.
// A wiped agent therefore never bootstraps a second cluster while its
// peers hold the old one.
func (a *Agent) formCluster(ctx context.Context) error {
	if a.node.HadState() || !a.cfg.Cluster.Multi() {
		return nil
	}
	expect := a.cfg.Cluster.BootstrapExpect
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for attempt := 0; ; attempt++ {
		if leader, _ := a.node.Leader(); leader != "" {
			a.log.Info("cluster formed", zap.String("leader", leader))
			return nil
		}
		peers := map[string]NodeInfo{}
		existing := ""
		addrs := a.cfg.Cluster.Join
		if a.consulJoin != nil {
			found, err := a.consulJoin.peers(ctx)
			if err != nil && attempt%10 == 0 {
				a.log.Info("could not look peers up in Consul yet", zap.Error(err))
			}
			addrs = append(slices.Clone(addrs), found...)
		}
		for _, addr := range addrs {
			if addr == a.node.LocalAddr() {
				continue
			}
			var ni NodeInfo
			cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			err := a.callPeer(cctx, addr, http.MethodGet, "/cluster/v1/info", nil, &ni)
			cancel()
			if err != nil {
				if attempt%10 == 0 {
					a.log.Info("peer not reachable yet", zap.String("address", addr), zap.Error(err))
				}
				continue
			}
			if ni.ID == a.node.ID() {
				continue
			}
			peers[ni.ID] = ni
			if ni.HasState {
				existing = addr
			}
		}
		switch {
		case existing != "":
			cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			err := a.JoinVia(cctx, existing)
			cancel()
			if err == nil {
				a.log.Info("joined existing cluster", zap.String("via", existing))
				return nil
			}
			a.log.Warn("join failed; retrying", zap.String("via", existing), zap.Error(err))
		case expect > 1 && len(peers)+1 >= expect:
			servers := []raft.Server{{ID: raft.ServerID(a.node.ID()), Address: raft.ServerAddress(a.node.LocalAddr()), Suffrage: raft.Voter}}
			for _, p := range peers {
				if p.BootstrapExpect != expect {
					return fmt.Errorf("peer %s (%s) has bootstrap_expect %d, this agent %d: fix the configuration", p.Name, p.RaftAddr, p.BootstrapExpect, expect)
				}
				servers = append(servers, raft.Server{ID: raft.ServerID(p.ID), Address: raft.ServerAddress(p.RaftAddr), Suffrage: raft.Voter})
				a.names.set(p.ID, p.Name)
			}
			sort.Slice(servers, func(i, j int) bool { return servers[i].ID < servers[j].ID })
			if err := a.node.BootstrapServers(servers); err != nil && !errors.Is(err, raft.ErrCantBootstrap) {
				return fmt.Errorf("bootstrap: %w", err)
			}
			a.log.Info("bootstrapped cluster", zap.Int("servers", len(servers)))
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

// nameOf is the node name of a server id, as far as this agent knows it.
func (a *Agent) nameOf(id string) string {
	if id == a.node.ID() {
		return a.cfg.NodeName
	}
	return a.names.get(id)
}

// nameBook remembers node names by id (learned from joins and peers).
type nameBook struct {
	mu sync.Mutex
	m  map[string]string
}

func (b *nameBook) set(id, name string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.m == nil {
		b.m = map[string]string{}
	}
	if name != "" {
		b.m[id] = name
	}
}

func (b *nameBook) get(id string) string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.m[id]
}

// pilotDelegate connects raft-autopilot to this agent.
type pilotDelegate struct {
	a *Agent

	mu       sync.Mutex
	lastSeen map[raft.ServerID]time.Time
	// removals are the removals of failed servers in flight; the term
	// waits for them when it ends.
	removals sync.WaitGroup
}

func (d *pilotDelegate) AutopilotConfig() *autopilot.Config {
	minQuorum := uint(0)
	if e := d.a.cfg.Cluster.BootstrapExpect; e >= 3 {
		minQuorum = uint(e)
	}
	return &autopilot.Config{CleanupDeadServers: true, LastContactThreshold: 2 * time.Second, MaxTrailingLogs: 250,
		MinQuorum: minQuorum, ServerStabilizationTime: 10 * time.Second}
}

func (d *pilotDelegate) NotifyState(st *autopilot.State) {
	v := 0.0
	if st.Healthy {
		v = 1
	}
	d.a.m.autopilotHealthy.Set(v)
	d.a.m.failureTolerance.Set(float64(st.FailureTolerance))
}

func (d *pilotDelegate) FetchServerStats(ctx context.Context, servers map[raft.ServerID]*autopilot.Server) map[raft.ServerID]*autopilot.ServerStats {
	out := map[raft.ServerID]*autopilot.ServerStats{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for id, s := range servers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var st ServerStats
			cctx, cancel := context.WithTimeout(ctx, time.Second)
			defer cancel()
			if err := d.a.callPeer(cctx, string(s.Address), http.MethodGet, "/cluster/v1/stats", nil, &st); err != nil {
				return
			}
			d.a.names.set(string(id), st.Name)
			mu.Lock()
			out[id] = &autopilot.ServerStats{LastContact: time.Duration(st.LastContactMS) * time.Millisecond, LastTerm: st.LastTerm, LastIndex: st.LastIndex}
			mu.Unlock()
			d.mu.Lock()
			d.lastSeen[id] = time.Now()
			d.mu.Unlock()
		}()
	}
	wg.Wait()
	return out
}

func (d *pilotDelegate) KnownServers() map[raft.ServerID]*autopilot.Server {
	servers, err := d.a.node.Servers()
	if err != nil {
		return nil
	}
	out := map[raft.ServerID]*autopilot.Server{}
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, s := range servers {
		status := autopilot.NodeFailed
		if string(s.ID) == d.a.node.ID() || time.Since(d.lastSeen[s.ID]) < 30*time.Second {
			status = autopilot.NodeAlive
		}
		if _, ok := d.lastSeen[s.ID]; !ok && string(s.ID) != d.a.node.ID() {
			// Never seen yet by this leader: give it time before calling it failed.
			d.lastSeen[s.ID] = time.Now()
			status = autopilot.NodeAlive
		}
		out[s.ID] = &autopilot.Server{ID: s.ID, Name: d.a.names.get(string(s.ID)), Address: s.Address, NodeStatus: status,
			Version: Version, IsLeader: string(s.ID) == d.a.node.ID(), NodeType: autopilot.NodeVoter}
	}
	return out
}

// RemoveFailedServer must not block autopilot: the removal runs beside
// it, and the term joins it when it ends.
func (d *pilotDelegate) RemoveFailedServer(s *autopilot.Server) {
	d.removals.Go(func() {
		d.a.log.Warn("removing failed server", zap.String("node_id", string(s.ID)), zap.String("node", s.Name), zap.String("reason", "dead_server_cleanup"))
		if err := d.a.node.RemoveServer(string(s.ID)); err != nil {
			d.a.log.Warn("remove failed server", zap.String("node_id", string(s.ID)), zap.Error(err))
		}
	})
}
