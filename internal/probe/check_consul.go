package probe

import (
	"context"
	"fmt"
	"strings"
	"sync"

	"github.com/immutd/immutd/internal/state"
	"github.com/immutd/immutd/internal/traffic/consul"
)

// KindConsul reads the Consul checks of the instance's registration
// (service id immutd-FLEET-ID, made by a fleet's consul traffic backend),
// other than immutd's own TTL check: one more input next to immutd's own
// probes. It fails when one of them is critical. A Consul that cannot be
// read never fails an instance: the probe then passes with a detail that
// says it was not counted, and the fleet's other checks decide (config
// refuses a fleet whose only checks are consul checks).
const KindConsul = "consul"

// consulService is the service name the checker's Consul clients are
// made with; reading an instance's checks does not use it.
const consulService = "immutd"

// consulChecker runs consul checks, with one client per Consul setting.
type consulChecker struct {
	mu      sync.Mutex
	clients map[state.ConsulCheck]*consul.Backend
}

func newConsulChecker(checkEnv) *consulChecker {
	return &consulChecker{clients: map[state.ConsulCheck]*consul.Backend{}}
}

func (c *consulChecker) normalize(ck state.Check) state.Check {
	if ck.Consul != nil {
		cc := *ck.Consul
		ck.Consul = &cc
	}
	return ck
}

func (c *consulChecker) describe(ck state.Check, _ string) string {
	if ck.Consul == nil {
		return "consul checks"
	}
	return "consul checks at " + ck.Consul.Address
}

func (c *consulChecker) client(cc state.ConsulCheck) (*consul.Backend, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if b := c.clients[cc]; b != nil {
		return b, nil
	}
	b, err := consul.New(consul.Config{Address: cc.Address, Service: consulService, TokenFile: cc.TokenFile, CAFile: cc.CAFile,
		CertFile: cc.CertFile, KeyFile: cc.KeyFile, TLSServerName: cc.TLSServerName}, nil)
	if err != nil {
		return nil, err
	}
	c.clients[cc] = b
	return b, nil
}

// run reads the instance's Consul checks.
func (c *consulChecker) run(ctx context.Context, j *job) (bool, string) {
	if j.check.Consul == nil {
		return false, "consul check without a Consul address"
	}
	b, err := c.client(*j.check.Consul)
	if err != nil {
		return true, "not counted: " + err.Error()
	}
	checks, err := b.InstanceChecks(ctx, j.fleet, j.t.id)
	if err != nil {
		return true, "not counted: " + err.Error()
	}
	var critical []string
	for _, ck := range checks {
		if ck.Status == "critical" {
			critical = append(critical, fmt.Sprintf("%s critical: %s", ck.Name, strings.TrimSpace(ck.Output)))
		}
	}
	if len(critical) > 0 {
		return false, strings.Join(critical, "; ")
	}
	return true, fmt.Sprintf("%d consul checks, none critical", len(checks))
}

// closeIdle releases the clients' idle connections when Run ends.
func (c *consulChecker) closeIdle() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for k, b := range c.clients {
		_ = b.Close()
		delete(c.clients, k)
	}
}
