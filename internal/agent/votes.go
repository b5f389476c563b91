package agent

import (
	"fmt"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/immutd/immutd/internal/leader"
	"github.com/immutd/immutd/internal/probe"
	"github.com/immutd/immutd/internal/reconcile"
)

// Every agent probes every instance; followers push their verdicts to the
// leader, which counts them as votes. An instance is judged unhealthy (or
// healthy) only when a quorum of the cluster's agents agree, so one agent
// cut off from the instances, or from the other agents, cannot cause a
// single termination. Reports arrive over the authenticated cluster port
// and count only while their sender is a voter of the raft
// configuration: a made-up node id, or a server that left, counts for
// nothing.

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

// forget drops the reports of servers that are no longer voters, so the
// map stays bounded by the cluster's size.
func (v *votes) forget(voters map[string]bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	for id := range v.reports {
		if !voters[id] {
			delete(v.reports, id)
		}
	}
}

func (v *votes) reset() {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.reports = map[string]receivedReport{}
}

// aggregate combines this agent's own verdicts (self is its name and
// selfID its node id) with the fresh reports of the other voters; voters
// holds the node ids of the cluster's voters.
func (v *votes) aggregate(self, selfID string, local map[string]probe.Verdict, voterIDs map[string]bool, rule QuorumRule, now time.Time) map[string]leader.Judgement {
	voters := max(len(voterIDs), 1)
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
	for id, r := range v.reports {
		if now.Sub(r.at) > verdictFreshness || id == selfID || !voterIDs[id] {
			continue
		}
		for id, vd := range r.rep.Verdicts {
			byInst[id] = append(byInst[id], vote{r.rep.NodeName, vd.State, vd.Evidence})
		}
	}
	v.mu.Unlock()

	need := rule(voters)
	out := make(map[string]leader.Judgement, len(byInst))
	for id, vs := range byInst {
		sort.Slice(vs, func(i, j int) bool { return vs[i].node < vs[j].node })
		var j leader.Judgement
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
