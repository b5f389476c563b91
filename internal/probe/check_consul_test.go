package probe

import (
	"strings"
	"testing"
	"time"

	consulapi "github.com/hashicorp/consul/api"

	"github.com/immutd/immutd/internal/state"
	"github.com/immutd/immutd/internal/traffic/consul/consulstandin"
)

// TestConsulCheckFollowsTheInstancesConsulChecks registers an instance in
// the Consul stand-in as a fleet's consul backend does, with immutd's own
// TTL check (critical: it is not counted) and an operator's check: the
// consul check passes while the operator's check does, fails when it is
// critical, and never fails once Consul cannot be reached.
func TestConsulCheckFollowsTheInstancesConsulChecks(t *testing.T) {
	standin := consulstandin.Start(t, consulstandin.Options{})
	cfg := consulapi.DefaultConfig()
	cfg.Address = standin.Addr
	client, err := consulapi.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	const sid = "immutd-web-i1"
	if err := client.Agent().ServiceRegister(&consulapi.AgentServiceRegistration{ID: sid, Name: "web", Address: "127.0.0.1", Port: 9,
		Checks: consulapi.AgentServiceChecks{
			{CheckID: "immutd-check-web-i1", Name: "immutd health verdict", TTL: "30s", Status: "critical"},
			{CheckID: "disk", Name: "disk", TTL: "1h", Status: "passing"},
		}}); err != nil {
		t.Fatal(err)
	}
	p, w := realProber(t, Options{})
	c := state.Check{Name: "catalog", Kind: KindConsul, Consul: &state.ConsulCheck{Address: standin.Addr},
		Interval: 50 * time.Millisecond, Timeout: time.Second, HealthyThreshold: 1, UnhealthyThreshold: 2, StartupTimeout: time.Minute}
	p.Set([]Target{{InstanceID: "i1", Fleet: "web", Address: "127.0.0.1:9", Checks: []state.Check{c}}})
	w.await(t, "i1", Healthy)

	if err := client.Agent().UpdateTTL("disk", "92% full", "critical"); err != nil {
		t.Fatal(err)
	}
	v := w.await(t, "i1", Unhealthy)
	if got := strings.Join(v.Evidence, " "); !strings.Contains(got, "disk critical: 92% full") {
		t.Fatalf("evidence %q", got)
	}
	if err := client.Agent().UpdateTTL("disk", "", "passing"); err != nil {
		t.Fatal(err)
	}
	w.await(t, "i1", Healthy)

	// Consul gone: the check is not counted, so it does not fail.
	standin.Close()
	waitUntil(t, "a probe that could not reach Consul", func() bool {
		for _, r := range p.History("i1") {
			if strings.HasPrefix(r.Detail, "not counted: ") && r.OK {
				return true
			}
		}
		return false
	})
	if v, changed := w.pop("i1"); changed {
		t.Fatalf("verdict changed to %s once Consul was unreachable", v.State)
	}
}
