package e2e

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	consulapi "github.com/hashicorp/consul/api"

	"github.com/immutd/immutd/internal/config"
	"github.com/immutd/immutd/internal/traffic/consul/consulstandin"
)

// passingInstances reads health/service/web?passing from Consul (the
// stand-in here) with the real client: the instance ids and the image
// digests registered as passing.
func passingInstances(t testing.TB, c *consulapi.Client) (ids []string, digests map[string]bool) {
	t.Helper()
	entries, _, err := c.Health().Service("web", "", true, nil)
	if err != nil {
		t.Fatalf("health/service/web?passing: %v", err)
	}
	digests = map[string]bool{}
	for _, e := range entries {
		ids = append(ids, e.Service.Meta["immutd-instance"])
		digests[e.Service.Meta["immutd-image-digest"]] = true
	}
	sort.Strings(ids)
	return ids, digests
}

// TestTrafficConsulFollowsVerdicts runs the real binary against the
// Consul stand-in: admitted instances are registered passing, a failing
// instance's TTL check turns critical and its registration goes with its
// drain, and a rollout ends with only the new image passing.
func TestTrafficConsulFollowsVerdicts(t *testing.T) {
	standin := consulstandin.Start(t, consulstandin.Options{})
	cfg := consulapi.DefaultConfig()
	cfg.Address = standin.Addr
	client, err := consulapi.NewClient(cfg)
	must(t, err)
	block := func() string {
		return fmt.Sprintf(`  traffic {
    min_ready   = "1s"
    drain_delay = "1s"
    consul "catalog" {
      address = %q
      service = "web"
      tags    = ["e2e"]
    }
  }
`, standin.Addr)
	}
	e := newEnv(t, envOpts{})
	e.start()
	e.writeFleet("web.hcl", fleetFile("web", 3, "v1", block()))
	waitPassing := func(what string, match func(ids []string, digests map[string]bool, f map[string]string) bool) {
		t.Helper()
		e.waitFor(what, 2*time.Minute, func() (bool, string) {
			ids, digests := passingInstances(t, client)
			traffic := map[string]string{}
			for _, in := range e.fleet("web").Instances {
				traffic[in.ID] = in.State + "/" + in.Traffic
			}
			return match(ids, digests, traffic), fmt.Sprintf("passing %v %v; fleet %v", ids, digests, traffic)
		})
	}
	admittedOnly := func(ids []string, f map[string]string) bool {
		for _, id := range ids {
			if f[id] != "healthy/admitted" {
				return false
			}
		}
		return true
	}
	waitPassing("three admitted instances passing in Consul", func(ids []string, _ map[string]bool, f map[string]string) bool {
		return len(ids) == 3 && admittedOnly(ids, f)
	})

	victim := e.fleet("web").Instances[0]
	resp, err := http.Post("http://"+victim.Address+"/fail", "text/plain", nil)
	must(t, err)
	resp.Body.Close()
	waitPassing("the failing instance out of the passing set", func(ids []string, _ map[string]bool, _ map[string]string) bool {
		return !strings.Contains(strings.Join(ids, " "), victim.ID)
	})
	e.waitTerminated("web", victim.ID)
	waitPassing("three passing again after the replacement", func(ids []string, _ map[string]bool, f map[string]string) bool {
		return len(ids) == 3 && admittedOnly(ids, f)
	})
	svcs, err := client.Agent().Services()
	must(t, err)
	for id := range svcs {
		if strings.Contains(id, victim.ID) {
			t.Fatalf("the terminated instance is still registered as %s", id)
		}
	}

	before := e.fleet("web").ImageDigest
	e.writeFleet("web.hcl", fleetFile("web", 3, "v2", block()))
	waitPassing("only v2 passing after the rollout", func(ids []string, digests map[string]bool, f map[string]string) bool {
		return len(ids) == 3 && len(digests) == 1 && !digests[before] && admittedOnly(ids, f)
	})
}

// TestClusterFormsThroughConsul starts three agents that know no peer
// address, only a Consul agent (the stand-in): each registers its cluster
// address there, finds the others in the catalog, and they form one
// cluster that runs a fleet. Stopping an agent deregisters it.
func TestClusterFormsThroughConsul(t *testing.T) {
	standin := consulstandin.Start(t, consulstandin.Options{})
	base := t.TempDir()
	tlsDir, fleets := filepath.Join(base, "tls"), filepath.Join(base, "fleets.d")
	must(t, os.MkdirAll(tlsDir, 0o755))
	must(t, os.MkdirAll(fleets, 0o755))
	names := []string{"agent-1", "agent-2", "agent-3"}
	makeCerts(t, tlsDir, names...)
	var agents []*env
	for _, name := range names {
		block := fmt.Sprintf(`  bootstrap_expect = 3
  join_consul {
    address = %q
    service = "immutd-e2e"
  }
  tls {
    ca_file   = %q
    cert_file = %q
    key_file  = %q
  }`, standin.Addr, filepath.Join(tlsDir, "ca.pem"), filepath.Join(tlsDir, name+".pem"), filepath.Join(tlsDir, name+"-key.pem"))
		agents = append(agents, newEnv(t, envOpts{name: name, fleetsDir: fleets, cluster: block,
			extra: fmt.Sprintf("provider %q {\n  dir = %q\n}\n", config.ProviderLocal, filepath.Join(base, "local-provider"))}))
	}
	t.Cleanup(func() {
		for _, pid := range processesUnder(filepath.Join(base, "local-provider")) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	})
	for _, e := range agents {
		e.launch()
	}
	for _, e := range agents {
		e.waitReady(90 * time.Second)
	}
	c := &cluster{t: t, agents: agents, fleetsDir: fleets}
	lead := c.leader()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	ms, err := agents[lead].client.Members(ctx)
	cancel()
	if err != nil || len(ms) != 3 {
		t.Fatalf("cluster formed with members %+v (%v), want 3", ms, err)
	}
	c.writeFleet("web.hcl", fleetFile("web", 2, "v1", ""))
	c.waitHealthy("web", 2)

	cfg := consulapi.DefaultConfig()
	cfg.Address = standin.Addr
	client, err := consulapi.NewClient(cfg)
	must(t, err)
	registered := func() int {
		entries, _, err := client.Health().Service("immutd-e2e", "raft", true, nil)
		must(t, err)
		return len(entries)
	}
	if n := registered(); n != 3 {
		t.Fatalf("%d agents registered passing in Consul, want 3", n)
	}
	agents[(lead+1)%3].stop()
	agents[0].waitFor("the stopped agent deregistered", 30*time.Second, func() (bool, string) {
		n := registered()
		return n == 2, fmt.Sprintf("%d registered", n)
	})
}
