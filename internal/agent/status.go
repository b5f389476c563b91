package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/immutd/immutd/internal/api"
	"github.com/immutd/immutd/internal/reconcile"
	"github.com/immutd/immutd/internal/state"
)

// Status is the leader's last pass as the API shows it.
type Status = api.Status

// publishDesired exports the replicated desired sizes (every agent).
func (a *Agent) publishDesired() {
	sizes := map[string]int{}
	failures := map[string]int{}
	pauses := map[string]int{"": 0}
	a.node.Read(func(st *state.State) {
		a.m.desiredGen.Set(float64(st.Generation))
		a.m.intentsOpen.Set(float64(len(st.Intents)))
		storm := 0.0
		if st.Storm.Active {
			storm = 1
		}
		a.m.clusterStorm.Set(storm)
		now := time.Now()
		for _, p := range st.Pauses {
			if p.Holds(p.Fleet, now) {
				pauses[p.Fleet]++
			}
		}
		for name, f := range st.Fleets {
			sizes[name] = f.Spec.Size
			a.m.reverted.WithLabelValues(name).Set(boolGauge(f.Revert != nil && f.Revert.ConfirmedBy == ""))
			a.m.rolloutPaused.WithLabelValues(name).Set(boolGauge(f.Rollout != nil && f.Rollout.Paused))
			// A fleet removed from the fleet files wants no instances: immutd
			// launches none for it, whether it keeps the ones that run
			// (until an operator drains it) or drains them.
			if f.Unconfigured || f.Draining {
				sizes[name] = 0
			}
			if fs := st.Stats[name]; fs != nil {
				failures[name] = fs.LaunchFailures
			}
		}
	})
	for name, size := range sizes {
		a.m.fleetDesired.WithLabelValues(name).Set(float64(size))
		a.m.launchFailures.WithLabelValues(name).Set(float64(failures[name]))
		pauses[name] += 0
	}
	for fleet, n := range pauses {
		a.m.pauses.WithLabelValues(fleet).Set(float64(n))
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	for name := range a.knownFleets {
		if _, ok := sizes[name]; !ok {
			a.m.forgetFleet(name)
			delete(a.knownFleets, name)
		}
	}
	for name := range sizes {
		if !a.knownFleets[name] {
			a.knownFleets[name] = true
			a.m.initFleet(name)
		}
	}
}

func boolGauge(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// Status implements api.Backend. A leader serves its last pass; any other
// agent serves its replicated copy, marked stale.
func (a *Agent) Status(ctx context.Context) api.Status {
	var generation uint64
	var fleets []api.Fleet
	a.node.Read(func(st *state.State) {
		generation = st.Generation
		for _, n := range st.FleetNames() {
			var stats state.FleetStats
			if s := st.Stats[n]; s != nil {
				stats = *s
			}
			f := api.FleetHeader(st.Fleets[n], stats)
			for _, r := range st.InstancesOf(n) {
				ai := api.InstanceOf(r.ID, n, r, nil)
				ai.State = string(reconcile.StateUnknown)
				f.Instances = append(f.Instances, ai)
			}
			fleets = append(fleets, f)
		}
	})
	leaderAddr, leaderID := a.node.Leader()
	s := api.Status{Node: a.cfg.NodeName, PID: os.Getpid(), NodeID: a.node.ID(), IsLeader: a.node.IsLeader(), Leader: leaderAddr, LeaderID: leaderID,
		Term: a.node.Term(), AppliedIndex: a.node.AppliedIndex(), Generation: generation, Version: Version}
	committed := ""
	lastErr := map[string]string{}
	a.node.Read(func(st *state.State) {
		// The newest failed launch of each fleet, for its error in full.
		for i := len(st.Events) - 1; i >= 0; i-- {
			if e := st.Events[i]; e.Action == state.ActionLaunchFailed && len(e.Evidence) > 0 && lastErr[e.Fleet] == "" {
				lastErr[e.Fleet] = strings.Join(e.Evidence, "; ")
			}
		}
		s.DesiredAt = st.DesiredAt
		s.Events = st.EventsSince(0, 20)
		s.SourceNode = st.SourceNode
		committed = st.SourceHash
		s.Storm = st.Storm.Active
		now := time.Now()
		s.Pauses = []state.Pause{}
		for _, p := range st.Pauses {
			if p.Holds(p.Fleet, now) {
				s.Pauses = append(s.Pauses, p)
			}
		}
	})
	if !s.IsLeader && leaderAddr != "" {
		s.LastContact = time.Since(a.node.LastContact()).Round(time.Millisecond).String()
	}
	a.mu.Lock()
	s.DataDir = a.dataDir
	if a.configErr != nil {
		s.Config = *a.configErr
	}
	last := a.lastStatus
	s.LastPass = a.lastPass
	s.Diverged = a.fleetsHash != "" && committed != "" && a.fleetsHash != committed
	a.mu.Unlock()
	if s.IsLeader && last != nil {
		s.Fleets = withLaunchErrors(last.Fleets(), lastErr)
		return s
	}
	// Follower (or leader before its first pass): the replicated view.
	s.Stale = true
	s.Fleets = withLaunchErrors(fleets, lastErr)
	return s
}

// withLaunchErrors is a copy of fleets (the published status is shared)
// with the last launch error of each fleet whose launches keep failing.
func withLaunchErrors(fleets []api.Fleet, lastErr map[string]string) []api.Fleet {
	out := make([]api.Fleet, len(fleets))
	copy(out, fleets)
	for i := range out {
		if out[i].LaunchFailures > 0 {
			out[i].LastLaunchError = lastErr[out[i].Name]
		}
	}
	return out
}

// Events implements api.Backend.
func (a *Agent) Events(ctx context.Context, after uint64, fleet string, limit int) []state.Event {
	var out []state.Event
	a.node.Read(func(st *state.State) {
		for _, e := range st.EventsSince(after, 0) {
			if fleet == "" || e.Fleet == fleet {
				out = append(out, e)
			}
		}
	})
	if limit > 0 && len(out) > limit {
		out = out[len(out)-limit:]
	}
	return out
}

// Ready implements api.Backend.
func (a *Agent) Ready() error {
	if dd := a.dataDirStatus(); !dd.At.IsZero() && !dd.Writable {
		return fmt.Errorf("%s: raft cannot persist", dd.Error)
	}
	addr, _ := a.node.Leader()
	if addr == "" {
		return errors.New("no raft leader")
	}
	if a.node.IsLeader() {
		a.mu.Lock()
		defer a.mu.Unlock()
		if a.lastPass.IsZero() {
			return errors.New("leader has not finished its first reconcile pass")
		}
	}
	return nil
}
