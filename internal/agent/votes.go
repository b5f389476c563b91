package agent

import (
	"fmt"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/immutd/immutd/internal/probe"
	"github.com/immutd/immutd/internal/reconcile"
)

// Every agent probes every instance; followers push their verdicts to the
// leader, which counts them as votes. An instance is judged unhealthy (or
// healthy) only when a quorum of the cluster's agents agree, so one agent
// cut off from the instances, or from the other agents, cannot cause a
// single termination.

const (
	// verdictReportInterval is how often followers push their verdicts
	// (and at once when one changes).
	verdictReportInterval = 500 * time.Millisecond
	// verdictFreshness is how old a follower's report may be to count.
	verdictFreshness = 3 * time.Second
)

// QuorumRule turns the number of voting agents into the number of agreeing
// votes a verdict needs.
type QuorumRule func(voters int) int

// ParseQuorum parses "majority", "all" or a count.
func ParseQuorum(s string) (QuorumRule, error) {
	switch s {
	case "", "majority":
		return func(n int) int { return n/2 + 1 }, nil
	case "all":
		return func(n int) int { return max(n, 1) }, nil
	}
	k, err := strconv.Atoi(s)
	if err != nil || k < 1 {
		return nil, fmt.Errorf("health quorum %q: want \"majority\", \"all\" or a count >= 1", s)
	}
	return func(n int) int { return k }, nil
}

type receivedReport struct {
	rep VerdictReport
	at  time.Time
}

// votes collects the verdict reports of other agents (leader side).
type votes struct {
	mu      sync.Mutex
	reports map[string]receivedReport
}

func newVotes() *votes { return &votes{reports: map[string]receivedReport{}} }

func (v *votes) report(rep VerdictReport, now time.Time) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.reports[rep.NodeID] = receivedReport{rep: rep, at: now}
}

func (v *votes) reset() {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.reports = map[string]receivedReport{}
}

// judgement is the cluster's verdict on one instance.
type judgement struct {
	Health    reconcile.Health
	Evidence  []string
	FailingOn []string
	HealthyOn []string
}

// aggregate combines this agent's own verdicts with the fresh reports of
// the others. voters is the number of agents in the cluster.
func (v *votes) aggregate(self string, local map[string]probe.Verdict, voters int, rule QuorumRule, now time.Time) map[string]judgement {
	type vote struct {
		node     string
		state    string
		evidence []string
	}
	byInst := map[string][]vote{}
	for id, vd := range local {
		byInst[id] = append(byInst[id], vote{self, string(vd.State), vd.Evidence})
	}
	v.mu.Lock()
	for _, r := range v.reports {
		if now.Sub(r.at) > verdictFreshness || r.rep.NodeName == self {
			continue
		}
		for id, vd := range r.rep.Verdicts {
			byInst[id] = append(byInst[id], vote{r.rep.NodeName, vd.State, vd.Evidence})
		}
	}
	v.mu.Unlock()

	need := rule(max(voters, 1))
	out := make(map[string]judgement, len(byInst))
	for id, vs := range byInst {
		sort.Slice(vs, func(i, j int) bool { return vs[i].node < vs[j].node })
		var j judgement
		unhealthy, never := 0, 0
		for _, x := range vs {
			switch probe.State(x.state) {
			case probe.Healthy:
				j.HealthyOn = append(j.HealthyOn, x.node)
			case probe.Unhealthy, probe.NeverHealthy:
				if probe.State(x.state) == probe.NeverHealthy {
					never++
				} else {
					unhealthy++
				}
				j.FailingOn = append(j.FailingOn, x.node)
				for _, e := range x.evidence {
					if voters > 1 {
						e = x.node + ": " + e
					}
					j.Evidence = append(j.Evidence, e)
				}
			}
		}
		switch {
		case unhealthy+never >= need:
			j.Health = reconcile.Unhealthy
			if never > unhealthy {
				j.Health = reconcile.NeverHealthy
			}
			if voters > 1 {
				j.Evidence = append(j.Evidence, fmt.Sprintf("failing on %d of %d agents (quorum %d)", unhealthy+never, voters, need))
			}
		case len(j.HealthyOn) >= need:
			j.Health = reconcile.Healthy
		default:
			// Not enough agents agree either way: neither killed nor
			// counted as available.
			j.Health = reconcile.Starting
		}
		out[id] = j
	}
	return out
}
