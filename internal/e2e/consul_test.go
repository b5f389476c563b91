package e2e

import (
	"fmt"
	"net/http"
	"sort"
	"strings"
	"testing"
	"time"

	consulapi "github.com/hashicorp/consul/api"

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
