package agent

import (
	"cmp"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strconv"
	"strings"
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
// holds the node ids of the cluster's voters. With a probe subset, an
// instance's votes are those of the agents assigned to probe it, and the
// quorum is counted among them.
func (v *votes) aggregate(self, selfID string, local map[string]probe.Verdict, voterIDs map[string]bool, rule QuorumRule, sub subset, now time.Time) map[string]leader.Judgement {
	voters := max(len(voterIDs), 1)
	if voters == 1 && !sub.active() {
		// A single agent: its own verdicts are the judgements, without
		// collecting votes per instance.
		need := rule(1)
		out := make(map[string]leader.Judgement, len(local))
		for id, vd := range local {
			one := [1]vote{{self, selfID, string(vd.State), vd.Evidence}}
			out[id] = judge(one[:], 1, need)
		}
		return out
	}
	byInst := make(map[string][]vote, len(local))
	for id, vd := range local {
		byInst[id] = append(byInst[id], vote{self, selfID, string(vd.State), vd.Evidence})
	}
	v.mu.Lock()
	for id, r := range v.reports {
		if now.Sub(r.at) > verdictFreshness || id == selfID || !voterIDs[id] {
			continue
		}
		for iid, vd := range r.rep.Verdicts {
			byInst[iid] = append(byInst[iid], vote{r.rep.NodeName, id, vd.State, vd.Evidence})
		}
	}
	v.mu.Unlock()

	if sub.active() {
		voters = sub.k
	}
	need := rule(voters)
	out := make(map[string]leader.Judgement, len(byInst))
	var assigned []string
	for id, vs := range byInst {
		if sub.active() {
			// Votes of agents not assigned to the instance (a report
			// from before a membership change) do not count.
			assigned = sub.pick(id, assigned[:0])
			vs = slices.DeleteFunc(vs, func(x vote) bool { return !slices.Contains(assigned, x.nodeID) })
			if len(vs) == 0 {
				continue
			}
		}
		sort.Slice(vs, func(i, j int) bool { return vs[i].node < vs[j].node })
		out[id] = judge(vs, voters, need)
	}
	return out
}

// vote is one agent's verdict on an instance.
type vote struct {
	node, nodeID string
	state        string
	evidence     []string
}

// judge counts the votes on one instance, sorted by node, among voters
// agents of which need must agree.
func judge(vs []vote, voters, need int) leader.Judgement {
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
	return j
}

// subset is the probe subset mode (cluster.probe_agents): each instance
// is probed by k of the cluster's voters instead of by all of them, so
// that the probes of a cluster grow with its instances, not with
// instances times agents. The k agents of an instance are chosen by
// rendezvous hashing of each voter's node id with the instance id: every
// agent computes the same choice from the same raft configuration,
// without coordination, and a change of voters moves only the instances
// of the voters that came or went. k below 1, or at least the number of
// voters, is the default: every agent probes every instance.
type subset struct {
	k      int
	voters []string // node ids, sorted
}

func newSubset(k int, voterIDs map[string]bool) subset {
	if k <= 0 || k >= len(voterIDs) {
		return subset{}
	}
	return subset{k: k, voters: slices.Sorted(maps.Keys(voterIDs))}
}

func (s subset) active() bool { return s.k > 0 }

// pick appends to buf the node ids of the k voters that probe instance
// id: those with the highest rendezvous scores.
func (s subset) pick(id string, buf []string) []string {
	type scored struct {
		score uint64
		node  string
	}
	var arr [16]scored
	sc := arr[:0]
	for _, node := range s.voters {
		sc = append(sc, scored{rendezvous(node, id), node})
	}
	slices.SortFunc(sc, func(a, b scored) int {
		if c := cmp.Compare(b.score, a.score); c != 0 {
			return c
		}
		return strings.Compare(a.node, b.node)
	})
	for _, c := range sc[:min(s.k, len(sc))] {
		buf = append(buf, c.node)
	}
	return buf
}

// rendezvous is the FNV-1a hash of node, a zero byte and id, mixed by
// MurmurHash3's 64-bit finalizer (FNV alone ranks voters unevenly for ids
// that differ in their last bytes).
func rendezvous(node, id string) uint64 {
	const offset, prime = 14695981039346656037, 1099511628211
	h := uint64(offset)
	for i := 0; i < len(node); i++ {
		h = (h ^ uint64(node[i])) * prime
	}
	h *= prime // the zero byte
	for i := 0; i < len(id); i++ {
		h = (h ^ uint64(id[i])) * prime
	}
	h ^= h >> 33
	h *= 0xff51afd7ed558ccd
	h ^= h >> 33
	h *= 0xc4ceb9fe1a85ec53
	h ^= h >> 33
	return h
}

// probes says whether agent node probes instance id.
func (s subset) probes(node, id string) bool {
	if !s.active() {
		return true
	}
	var buf [16]string
	return slices.Contains(s.pick(id, buf[:0]), node)
}
