package agent

import (
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/immutd/immutd/internal/probe"
	"github.com/immutd/immutd/internal/reconcile"
)

func report(node string, at time.Time, states map[string]string) VerdictReport {
	rep := VerdictReport{NodeID: node + "-id", NodeName: node, At: at, Verdicts: map[string]ReportedVerdict{}}
	for id, s := range states {
		rep.Verdicts[id] = ReportedVerdict{State: s, Evidence: []string{s + " seen by " + node}}
	}
	return rep
}

func TestVotesNeedAQuorumOfTheCluster(t *testing.T) {
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	majority, _ := ParseQuorum("majority")
	all, _ := ParseQuorum("all")
	two, _ := ParseQuorum("2")
	local := func(s probe.State) map[string]probe.Verdict {
		return map[string]probe.Verdict{"i": {State: s, Evidence: []string{"local " + string(s)}}}
	}
	tests := []struct {
		name      string
		self      probe.State
		reports   []VerdictReport
		voters    []string
		rule      QuorumRule
		want      reconcile.Health
		failingOn []string
	}{
		{name: "single agent decides alone", self: probe.Unhealthy, voters: []string{"n1-id"}, rule: majority, want: reconcile.Unhealthy, failingOn: []string{"n1"}},
		{name: "one of three failing kills nothing", self: probe.Unhealthy, voters: []string{"n1-id", "n2-id", "n3-id"}, rule: majority,
			reports: []VerdictReport{report("n2", now, map[string]string{"i": "healthy"}), report("n3", now, map[string]string{"i": "healthy"})},
			want:    reconcile.Healthy, failingOn: []string{"n1"}},
		{name: "two of three failing is unhealthy", self: probe.Healthy, voters: []string{"n1-id", "n2-id", "n3-id"}, rule: majority,
			reports: []VerdictReport{report("n2", now, map[string]string{"i": "unhealthy"}), report("n3", now, map[string]string{"i": "unhealthy"})},
			want:    reconcile.Unhealthy, failingOn: []string{"n2", "n3"}},
		{name: "a leader that hears from nobody cannot judge", self: probe.Unhealthy, voters: []string{"n1-id", "n2-id", "n3-id"}, rule: majority,
			want: reconcile.Starting, failingOn: []string{"n1"}},
		{name: "stale reports do not count", self: probe.Unhealthy, voters: []string{"n1-id", "n2-id", "n3-id"}, rule: majority,
			reports: []VerdictReport{report("n2", now.Add(-time.Minute), map[string]string{"i": "unhealthy"})},
			want:    reconcile.Starting, failingOn: []string{"n1"}},
		{name: "never healthy wins when most failures are", self: probe.NeverHealthy, voters: []string{"n1-id", "n2-id", "n3-id"}, rule: majority,
			reports: []VerdictReport{report("n2", now, map[string]string{"i": "never_healthy"})},
			want:    reconcile.NeverHealthy, failingOn: []string{"n1", "n2"}},
		{name: "all: every agent must agree", self: probe.Unhealthy, voters: []string{"n1-id", "n2-id", "n3-id"}, rule: all,
			reports: []VerdictReport{report("n2", now, map[string]string{"i": "unhealthy"}), report("n3", now, map[string]string{"i": "healthy"})},
			want:    reconcile.Starting, failingOn: []string{"n1", "n2"}},
		{name: "reports of servers that are not voters count for nothing", self: probe.Healthy, voters: []string{"n1-id", "n2-id", "n3-id"}, rule: majority,
			reports: []VerdictReport{report("forged", now, map[string]string{"i": "unhealthy"}), report("n4", now, map[string]string{"i": "unhealthy"})},
			want:    reconcile.Starting},
		{name: "a report that claims to be this agent counts for nothing", self: probe.Healthy, voters: []string{"n1-id", "n2-id", "n3-id"}, rule: majority,
			reports: []VerdictReport{report("n1", now, map[string]string{"i": "unhealthy"}), report("n2", now, map[string]string{"i": "unhealthy"})},
			want:    reconcile.Starting, failingOn: []string{"n2"}},
		{name: "count rule", self: probe.Unhealthy, voters: []string{"n1-id", "n2-id", "n3-id", "n4-id", "n5-id"}, rule: two,
			reports: []VerdictReport{report("n2", now, map[string]string{"i": "unhealthy"})},
			want:    reconcile.Unhealthy, failingOn: []string{"n1", "n2"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			v := newVotes()
			for _, r := range tc.reports {
				v.report(r, r.At)
			}
			voters := map[string]bool{}
			for _, id := range tc.voters {
				voters[id] = true
			}
			got := v.aggregate("n1", "n1-id", local(tc.self), voters, tc.rule, subset{}, now)["i"]
			if got.Health != tc.want || !reflect.DeepEqual(got.FailingOn, tc.failingOn) {
				t.Fatalf("got %s failing on %v, want %s failing on %v", got.Health, got.FailingOn, tc.want, tc.failingOn)
			}
			if got.Health == reconcile.Unhealthy && len(tc.voters) > 1 && len(got.Evidence) == 0 {
				t.Fatal("an unhealthy verdict without evidence")
			}
		})
	}
}

func TestParseQuorum(t *testing.T) {
	for _, bad := range []string{"most", "0", "-1"} {
		if _, err := ParseQuorum(bad); err == nil {
			t.Errorf("ParseQuorum(%q) accepted", bad)
		}
	}
	m, _ := ParseQuorum("majority")
	for n, want := range map[int]int{1: 1, 2: 2, 3: 2, 4: 3, 5: 3} {
		if got := m(n); got != want {
			t.Errorf("majority(%d) = %d, want %d", n, got, want)
		}
	}
}

// The probe subset: every instance gets k distinct voters, the load is
// spread evenly, and a voter leaving moves only the instances it probed.
func TestProbeSubsetIsStableAndBalanced(t *testing.T) {
	voters := map[string]bool{"a-id": true, "b-id": true, "c-id": true, "d-id": true, "e-id": true}
	s := newSubset(3, voters)
	const n = 30000
	load := map[string]int{}
	before := make([][]string, n)
	for i := 0; i < n; i++ {
		id := fmt.Sprintf("web-%08x", i)
		got := s.pick(id, nil)
		if len(got) != 3 || got[0] == got[1] || got[1] == got[2] || got[0] == got[2] {
			t.Fatalf("%s: probers %v; want 3 distinct", id, got)
		}
		if !reflect.DeepEqual(got, s.pick(id, nil)) {
			t.Fatalf("%s: two picks differ", id)
		}
		for _, v := range got {
			load[v]++
			if !s.probes(v, id) {
				t.Fatalf("%s: probes(%s) false for a picked voter", id, v)
			}
		}
		before[i] = got
	}
	for v, l := range load {
		if want := n * 3 / 5; l < want*9/10 || l > want*11/10 {
			t.Errorf("voter %s probes %d instances; want about %d", v, l, want)
		}
	}
	delete(voters, "e-id")
	after := newSubset(3, voters)
	for i := 0; i < n; i++ {
		id := fmt.Sprintf("web-%08x", i)
		if !slices.Contains(before[i], "e-id") && !reflect.DeepEqual(before[i], after.pick(id, nil)) {
			t.Fatalf("%s: probers moved from %v to %v though the voter that left was not one of them", id, before[i], after.pick(id, nil))
		}
	}
	// k at or above the voters, or 0: everybody probes everything.
	for _, k := range []int{0, 4, 9} {
		if s := newSubset(k, voters); s.active() || !s.probes("zz-id", "web-1") {
			t.Errorf("subset of %d among 4 voters is active", k)
		}
	}
}

// With a probe subset, a verdict counts the votes of the instance's
// probers only, and the quorum is of those k.
func TestVotesWithAProbeSubset(t *testing.T) {
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	majority, _ := ParseQuorum("majority")
	voterIDs := map[string]bool{"n1-id": true, "n2-id": true, "n3-id": true, "n4-id": true, "n5-id": true}
	sub := newSubset(3, voterIDs)
	// An instance id and which voters probe it.
	id := "web-0001"
	probers := sub.pick(id, nil)
	var outsider string
	for v := range voterIDs {
		if !slices.Contains(probers, v) {
			outsider = v
		}
	}
	name := func(nodeID string) string { return strings.TrimSuffix(nodeID, "-id") }
	// The leader is one of the outsiders: it has no verdict of its own.
	self := outsider
	v := newVotes()
	v.report(report(name(probers[0]), now, map[string]string{id: "unhealthy"}), now)
	v.report(report(name(probers[1]), now, map[string]string{id: "healthy"}), now)
	// Outsiders' reports (from before a membership change) count for nothing.
	for o := range voterIDs {
		if !slices.Contains(probers, o) && o != self {
			v.report(report(name(o), now, map[string]string{id: "unhealthy"}), now)
		}
	}
	got := v.aggregate(name(self), self, nil, voterIDs, majority, sub, now)[id]
	if got.Health != reconcile.Starting {
		t.Fatalf("1 of 3 probers failing, 1 healthy, outsiders failing: %s %v; want starting (2 of 3 needed)", got.Health, got.Evidence)
	}
	v.report(report(name(probers[2]), now, map[string]string{id: "unhealthy"}), now)
	got = v.aggregate(name(self), self, nil, voterIDs, majority, sub, now)[id]
	if got.Health != reconcile.Unhealthy || !slices.Contains(got.Evidence, "failing on 2 of 3 agents (quorum 2)") {
		t.Fatalf("2 of 3 probers failing: %s %v; want unhealthy, failing on 2 of 3", got.Health, got.Evidence)
	}
}
