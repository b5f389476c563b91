package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sort"
	"time"

	"github.com/immutd/immutd/internal/api"
	"github.com/immutd/immutd/internal/instance"
	"github.com/immutd/immutd/internal/reconcile"
	"github.com/immutd/immutd/internal/state"
)

// Status is the leader's last pass as the API shows it.
type Status = api.Status

// publish stores what the pass saw, and the intents it started, for the
// API, and updates the metrics.
func (t *term) publish(v view, in reconcile.Input, plan reconcile.Result, started []*state.Intent) {
	a := t.a
	startedBy := map[string]*state.Intent{}
	launches := map[string][]*state.Intent{}
	for _, it := range started {
		startedBy[it.InstanceID] = it
		if it.Kind == state.Launch {
			launches[it.Fleet] = append(launches[it.Fleet], it)
		}
	}
	byName := map[string]reconcile.FleetStatus{}
	for _, st := range plan.Fleets {
		byName[st.Fleet] = st
	}
	verdicts := a.prober.Verdicts()
	judged := t.judged
	t.driftMu.Lock()
	drift := make(map[string]*instance.Finding, len(t.drift))
	for id, d := range t.drift {
		drift[id] = d.finding
	}
	t.driftMu.Unlock()

	fleets := make([]api.Fleet, 0, len(in.Fleets))
	for _, fi := range in.Fleets {
		d := fi.Desired
		st := byName[d.Spec.Name]
		f := fleetHeader(d, v.stats[d.Spec.Name])
		f.Desired, f.UpToDate, f.States, f.Drifted, f.BackoffUntil = st.Desired, st.UpToDate, st.States, st.Drifted, st.BackoffUntil
		for _, b := range st.Blocked {
			f.Blocked = append(f.Blocked, api.Block{Cause: b.Cause, Detail: b.Detail})
		}
		for _, x := range fi.Instances {
			if x.Open == nil && startedBy[x.ID] != nil {
				x.Open = startedBy[x.ID]
			}
			ai := api.Instance{ID: x.ID, Fleet: d.Spec.Name, Orphan: x.Record == nil && x.Open == nil}
			if x.Record != nil {
				ai.ImageDigest, ai.Address, ai.Location, ai.CreatedAt = x.Record.ImageDigest, x.Record.Address, x.Record.Location, x.Record.CreatedAt
				ai.ProviderRef = x.Record.ProviderRef
			}
			if o := x.Observed; o != nil {
				ai.ImageDigest, ai.Address, ai.Location, ai.ProviderRef = o.ImageDigest, o.Address, o.Location, o.ProviderRef
				if ai.CreatedAt.IsZero() {
					ai.CreatedAt = o.StartedAt
				}
				ai.UpToDate = o.ImageDigest == d.ImageDigest && o.TemplateHash == d.TemplateHash
			}
			if vd, ok := verdicts[x.ID]; ok {
				ai.HealthSince = vd.Since
			}
			if j, ok := judged[x.ID]; ok {
				ai.Health, ai.Evidence, ai.FailingOn, ai.HealthyOn = string(j.Health), j.Evidence, j.FailingOn, j.HealthyOn
			}
			if fd := drift[x.ID]; fd != nil {
				ai.Drift = fd.Evidence
				ai.UpToDate = false
			}
			switch {
			case x.Open != nil && x.Open.Kind == state.Launch:
				ai.State = "launching"
				ai.Intent = "launch: " + x.Open.Reason
			case x.Open != nil:
				ai.State = "terminating"
				ai.Intent = "terminate: " + x.Open.Reason
			case x.Observed == nil:
				ai.State = "gone"
			case x.Observed.Phase != instance.Running:
				ai.State = "exited"
				ai.Evidence = append(ai.Evidence, "exited: "+x.Observed.ExitReason)
			case ai.Health == "":
				ai.State = "starting"
			default:
				ai.State = ai.Health
			}
			f.Instances = append(f.Instances, ai)
		}
		for _, it := range launches[d.Spec.Name] {
			f.Instances = append(f.Instances, api.Instance{ID: it.InstanceID, Fleet: it.Fleet, ImageDigest: it.ImageDigest,
				State: "launching", Intent: "launch: " + it.Reason, CreatedAt: it.CreatedAt})
		}
		// The counts follow the rows: intents started in this pass count
		// as launching or terminating already.
		counts := map[string]int{}
		for _, s := range reconcile.InstanceStates {
			counts[s] = 0
		}
		for _, ai := range f.Instances {
			if ai.Orphan && d.Spec.Drift.Orphans == state.OrphanIgnore {
				continue // reported as drift only
			}
			if ai.State == "gone" {
				counts["exited"]++
			} else if _, ok := counts[ai.State]; ok {
				counts[ai.State]++
			}
		}
		f.States = counts
		st.States = counts
		a.m.publish(st)
		fleets = append(fleets, f)
	}
	a.mu.Lock()
	a.lastStatus = &Status{Fleets: fleets}
	a.lastPass = time.Now()
	a.mu.Unlock()
}

func fleetHeader(d *state.DesiredFleet, st state.FleetStats) api.Fleet {
	return api.Fleet{Name: d.Spec.Name, Provider: d.Spec.Provider, Image: d.Spec.Image, ImageDigest: d.ImageDigest,
		ResolveError: d.ResolveError, Generation: d.Generation, Size: d.Spec.Size, Desired: d.Spec.Size,
		Unconfigured: d.Unconfigured, Draining: d.Draining, LaunchFailures: st.LaunchFailures,
		States: map[string]int{}, Drifted: map[string]int{}, Blocked: []api.Block{}, Instances: []api.Instance{}}
}

// publishDesired exports the replicated desired sizes (every agent).
func (a *Agent) publishDesired() {
	sizes := map[string]int{}
	a.node.Read(func(st *state.State) {
		a.m.desiredGen.Set(float64(st.Generation))
		a.m.intentsOpen.Set(float64(len(st.Intents)))
		for name, f := range st.Fleets {
			sizes[name] = f.Spec.Size
			if f.Draining {
				sizes[name] = 0
			}
		}
	})
	for name, size := range sizes {
		a.m.fleetDesired.WithLabelValues(name).Set(float64(size))
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

// Status implements api.Backend. A leader serves its last pass; any other
// agent serves its replicated copy, marked stale.
func (a *Agent) Status(ctx context.Context) api.Status {
	v := a.readView()
	leaderAddr, leaderID := a.node.Leader()
	s := api.Status{Node: a.cfg.NodeName, PID: os.Getpid(), NodeID: a.node.ID(), IsLeader: a.node.IsLeader(), Leader: leaderAddr, LeaderID: leaderID,
		Term: a.node.Term(), AppliedIndex: a.node.AppliedIndex(), Generation: v.generation, Version: Version}
	committed := ""
	a.node.Read(func(st *state.State) {
		s.DesiredAt = st.DesiredAt
		s.Events = st.EventsSince(0, 20)
		s.SourceNode = st.SourceNode
		committed = st.SourceHash
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
		s.Fleets = last.Fleets
		return s
	}
	// Follower (or leader before its first pass): the replicated view.
	s.Stale = true
	s.Fleets = []api.Fleet{}
	names := make([]string, 0, len(v.fleets))
	for n := range v.fleets {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		f := fleetHeader(v.fleets[n], v.stats[n])
		for _, r := range v.records {
			if r.Fleet != n {
				continue
			}
			f.Instances = append(f.Instances, api.Instance{ID: r.ID, Fleet: n, ImageDigest: r.ImageDigest, State: "unknown",
				Address: r.Address, Location: r.Location, CreatedAt: r.CreatedAt})
		}
		sort.Slice(f.Instances, func(i, j int) bool { return f.Instances[i].ID < f.Instances[j].ID })
		s.Fleets = append(s.Fleets, f)
	}
	return s
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
