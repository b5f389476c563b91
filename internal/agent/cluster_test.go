package agent

import (
	"context"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/immutd/immutd/internal/api"
)

// A cluster of three agents in this process, over mutual TLS on
// loopback, sharing one fleets directory and one (fake) provider.

func TestClusterFormsForwardsAndCountsEveryVoter(t *testing.T) {
	agents := newCluster(t, 3)
	lead := leaderOf(agents)
	f := followerOf(agents)

	// Membership: three voters, each named; a follower forwards.
	var ms []api.Member
	waitFor(t, "three named voters", func() bool {
		var err error
		ms, err = f.a.Members(context.Background())
		if err != nil || len(ms) != 3 {
			return false
		}
		for _, m := range ms {
			if m.Suffrage != "voter" || m.Name == "" {
				return false
			}
		}
		return true
	})
	var viaAPI []api.Member
	f.getJSON("/v1/cluster/members", &viaAPI)
	if len(viaAPI) != 3 {
		t.Fatalf("members via a follower's API: %+v", viaAPI)
	}

	// Fleet files in the shared directory: committed once, launched once.
	writeFleet(t, f.fleets, "web", webFleet(2, "app:v1"))
	waitFor(t, "2 instances healthy on every voter", func() bool {
		fl, ok := lead.fleetStatus("web")
		if !ok || fl.States["healthy"] != 2 {
			return false
		}
		for _, in := range fl.Instances {
			if len(in.HealthyOn) != 3 {
				return false
			}
		}
		return true
	})
	launched, _, _, _ := lead.prov.Calls()
	if len(launched) != 2 {
		t.Fatalf("launched %v, want 2 instances", launched)
	}

	// A follower's own status is its replicated copy; a consistent read
	// is the leader's.
	if st := f.status(); !st.Stale || st.IsLeader {
		t.Fatalf("follower status: stale %v leader %v", st.Stale, st.IsLeader)
	}
	var cst api.Status
	f.getJSON("/v1/status?consistent", &cst)
	if cst.Stale || !cst.IsLeader || cst.Node != lead.name {
		t.Fatalf("consistent status via a follower: node %s leader %v stale %v", cst.Node, cst.IsLeader, cst.Stale)
	}

	// A leader-only request sent to a follower's cluster port is told
	// where the leader is.
	code, body := f.rpc(http.MethodGet, "/cluster/v1/status", nil, true)
	if code != http.StatusMisdirectedRequest || !strings.Contains(body, lead.a.node.LocalAddr()) {
		t.Fatalf("status on a follower's cluster port: %d %s", code, body)
	}

	// One instance fails on every agent: the votes of all three count,
	// and it is replaced.
	sick := lead.prov.Running()[0]
	lead.prov.SetHealthy(sick, false)
	waitFor(t, "the sick instance to be replaced", func() bool {
		r := lead.prov.Running()
		fl, _ := lead.fleetStatus("web")
		return !slices.Contains(r, sick) && len(r) == 2 && fl.States["healthy"] == 2
	})

	// Drain through a follower's API, after the file is gone.
	if code, body := f.call(http.MethodPost, "/v1/fleets/web/drain", "", true); code != http.StatusConflict {
		t.Fatalf("drain of a configured fleet via a follower: %d %s", code, body)
	}
}

func TestClusterSurvivesTheLeaderStoppingAndRemovesIt(t *testing.T) {
	agents := newCluster(t, 3)
	old := leaderOf(agents)
	writeFleet(t, old.fleets, "web", webFleet(1, "app:v1"))
	waitFor(t, "1 healthy instance", func() bool { return old.healthyCount("web") == 1 })
	running := old.prov.Running()

	if err := old.stop(); err != nil {
		t.Fatalf("stop: %v", err)
	}
	if !old.logged("leadership handed over") || !old.logged("leadership lost; leader work stopped") {
		t.Fatal("a stopping leader did not hand over and stop its term")
	}
	var next *testAgent
	waitFor(t, "a new leader", func() bool { next = leaderOf(agents); return next != nil })
	waitFor(t, "the new leader's first pass", func() bool { return next.healthyCount("web") == 1 })
	if r := next.prov.Running(); !slices.Equal(r, running) {
		t.Fatalf("a new leader replaced healthy instances: %v → %v", running, r)
	}

	// The stopped agent is removed by name through the other follower.
	f := followerOf(agents)
	if code, body := f.call(http.MethodPost, "/v1/cluster/remove?node="+old.name, "", true); code != http.StatusOK {
		t.Fatalf("remove: %d %s", code, body)
	}
	waitFor(t, "two members", func() bool {
		ms, err := next.a.Members(context.Background())
		return err == nil && len(ms) == 2
	})
}

func TestClusterLeaveStopsTheAgent(t *testing.T) {
	agents := newCluster(t, 3)
	f := followerOf(agents)
	if code, body := f.call(http.MethodPost, "/v1/cluster/leave", "", true); code != http.StatusOK {
		t.Fatalf("leave: %d %s", code, body)
	}
	select {
	case err := <-f.done:
		f.cancel()
		f.cancel = nil
		if err != nil {
			t.Fatalf("a left agent's Run: %v", err)
		}
	case <-time.After(2 * time.Minute):
		t.Fatal("a left agent did not stop")
	}
	lead := leaderOf(agents)
	waitFor(t, "two members", func() bool {
		ms, err := lead.a.Members(context.Background())
		return err == nil && len(ms) == 2
	})
}
