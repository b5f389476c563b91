package agent

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"github.com/hashicorp/raft"
	autopilot "github.com/hashicorp/raft-autopilot"

	"github.com/immutd/immutd/internal/cluster"
	"github.com/immutd/immutd/internal/leader"
	"github.com/immutd/immutd/internal/reconcile"
	"github.com/immutd/immutd/internal/state"
	"github.com/immutd/immutd/internal/traffic/registry"
)

// leadership runs exactly one leader term at a time: on gaining
// leadership it starts a term (and, in a cluster, autopilot), on losing
// it the term's context is cancelled, the agent waits until all of the
// term's work has stopped, and then logs that it did.
func (a *Agent) leadership(ctx context.Context) error {
	type running struct {
		cancel context.CancelFunc
		done   chan struct{}
	}
	var cur *running
	stop := func() {
		if cur == nil {
			return
		}
		cur.cancel()
		<-cur.done
		cur = nil
		a.m.isLeader.Set(0)
		a.m.clearLeaderSeries()
		a.mu.Lock()
		a.lastStatus, a.lastPass = nil, time.Time{}
		a.mu.Unlock()
		a.log.Info("leadership lost; leader work stopped")
	}
	defer stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case isLeader := <-a.node.LeadershipChanges():
			stop()
			if !isLeader {
				continue
			}
			tctx, cancel := context.WithCancel(ctx)
			cur = &running{cancel: cancel, done: make(chan struct{})}
			a.m.isLeader.Set(1)
			go func(done chan struct{}) {
				defer close(done)
				a.runTerm(tctx)
			}(cur.done)
		}
	}
}

// runTerm runs one leader term and, in a cluster, autopilot beside it,
// until ctx ends; both have stopped when it returns.
func (a *Agent) runTerm(ctx context.Context) {
	a.votes.reset()
	// Traffic backends live for one term: a new leader opens its own, and
	// the backends' grace periods for entries they do not know start over.
	backends := registry.New(a.log.Named("traffic"))
	defer backends.Close()
	t := leader.New(leader.Config{
		Node: a.cfg.NodeName, Journal: journal{a.node}, Providers: a.providers, Judge: a, Metrics: leaderMetrics{a.m, a},
		Log: a.log.Named("leader"), Settings: a.leaderSettings, Wake: a.wake, Notify: a.Wake, Publish: a.publishPass,
		Executor: reconcile.ExecutorOptions{Logger: a.log.Named("executor")}, Backends: backends,
	})
	if a.cfg.Cluster.Multi() {
		d := &pilotDelegate{a: a, lastSeen: map[raft.ServerID]time.Time{}}
		pilot := autopilot.New(a.node.Raft(), d, autopilot.WithLogger(cluster.HCLogger(a.log.Named("autopilot"))))
		pilot.Start(ctx)
		a.pilotRef.Store(pilot)
		defer func() { <-pilot.Stop(); d.removals.Wait(); a.pilotRef.Store(nil) }()
	}
	a.term.Store(t)
	defer a.term.Store(nil)
	t.Run(ctx)
}

// leaderSettings are the reloadable settings the term reads.
func (a *Agent) leaderSettings() leader.Settings {
	a.mu.Lock()
	defer a.mu.Unlock()
	return leader.Settings{Interval: a.interval,
		Limits: reconcile.Limits{MaxInstances: a.limits.MaxInstances, MaxLaunchesInFlight: a.limits.MaxLaunchesInFlight,
			RemediationRate: a.limits.RemediationRate}}
}

// publishPass keeps the last pass for status.
func (a *Agent) publishPass(s *leader.Snapshot) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.lastStatus = s
	a.lastPass = s.At
}

// Judge implements leader.Judge: this agent's verdicts and the fresh
// reports of the other voters, counted by the quorum rule.
func (a *Agent) Judge(now time.Time) map[string]leader.Judgement {
	voters := a.node.VoterIDs()
	a.votes.forget(voters)
	local := a.prober.Verdicts()
	out := a.votes.aggregate(a.cfg.NodeName, a.node.ID(), local, voters, a.quorum, newSubset(a.probeAgents, voters), now)
	for id, j := range out {
		j.Since = local[id].Since
		out[id] = j
	}
	return out
}

// currentTerm is the running term, nil on a follower.
func (a *Agent) currentTerm() *leader.Term { return a.term.Load() }

func (a *Agent) pilot() *autopilot.Autopilot { return a.pilotRef.Load() }

// Resolve re-pins a fleet's image reference (an operator's explicit
// request after a tag moved).
func (a *Agent) Resolve(ctx context.Context, fleet string) error {
	if err := checkFleetName(fleet); err != nil {
		return err
	}
	return a.onLeader(ctx, http.MethodPost, "/cluster/v1/resolve", fleetRequest{Fleet: fleet}, nil, func() error {
		t := a.currentTerm()
		if t == nil {
			return leader.ErrNotReady
		}
		known := false
		a.node.Read(func(st *state.State) { known = st.Fleets[fleet] != nil })
		if !known {
			return fmt.Errorf("fleet %q is not known", fleet)
		}
		return t.Repin(ctx, map[string]bool{fleet: true})
	})
}

// journal is the raft node as the leader's Journal.
type journal struct{ *cluster.Node }

func (j journal) ServerIDs() ([]string, error) {
	servers, err := j.Servers()
	if err != nil {
		return nil, err
	}
	ids := make([]string, 0, len(servers))
	for _, s := range servers {
		ids = append(ids, string(s.ID))
	}
	return ids, nil
}

// leaderMetrics feeds the term's measurements into the agent's metrics.
type leaderMetrics struct {
	m *metrics
	a *Agent
}

func (l leaderMetrics) Pass(result leader.PassResult, took time.Duration) {
	l.m.passes.WithLabelValues(string(result)).Inc()
	l.m.reconcileDur.Observe(took.Seconds())
}

func (l leaderMetrics) Finished(it *state.Intent, provider string, outcome state.Outcome, took time.Duration) {
	l.m.intentsFinished.WithLabelValues(it.Fleet, string(it.Kind), string(outcome)).Inc()
	if it.Kind == state.Admit || it.Kind == state.Drain {
		l.m.trafficStep.WithLabelValues(string(it.Kind), string(outcome)).Observe(took.Seconds())
		return
	}
	l.m.providerCall.WithLabelValues(provider, string(it.Kind), string(outcome)).Observe(took.Seconds())
	if r := reconcile.Reason(it.Reason); it.Kind == state.Terminate && outcome == state.Done && r != reconcile.ReasonExcess && r != reconcile.ReasonDrain {
		l.m.replacements.WithLabelValues(it.Fleet, it.Reason).Inc()
	}
}

// Fleet publishes the leader's view of a fleet, with the fleet's streak
// of failed launches from the replicated state. Only fleets whose series
// exist are published (publishDesired makes and forgets them): a pass
// that read the state before a fleet was forgotten must not bring its
// series back.
func (l leaderMetrics) Fleet(st reconcile.FleetStatus) {
	failures := 0
	l.a.node.Read(func(s *state.State) {
		if fs := s.Stats[st.Fleet]; fs != nil {
			failures = fs.LaunchFailures
		}
	})
	l.a.mu.Lock()
	defer l.a.mu.Unlock()
	if l.a.knownFleets[st.Fleet] {
		l.m.publish(st, failures)
	}
}

func (l leaderMetrics) ImageRefMoved(fleet string, moved bool) {
	v := 0.0
	if moved {
		v = 1
	}
	l.m.imageRefMoved.WithLabelValues(fleet).Set(v)
}
