package agent

import (
	"reflect"
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
			got := v.aggregate("n1", "n1-id", local(tc.self), voters, tc.rule, now)["i"]
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
