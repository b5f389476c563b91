package leader

import (
	"time"

	"github.com/immutd/immutd/internal/api"
	"github.com/immutd/immutd/internal/instance"
	"github.com/immutd/immutd/internal/reconcile"
	"github.com/immutd/immutd/internal/state"
)

// publish hands what the pass saw, and the intents it started, to status
// and the metrics. The states and their counts are the planner's, with
// the intents started in this pass counted as launching or terminating
// already.
func (t *Term) publish(v view, in reconcile.Input, plan reconcile.Result, started []*state.Intent, now time.Time) {
	// The metrics are the fleets' status with the intents this pass
	// started and the traffic backends' blocks.
	byName := make(map[string]reconcile.FleetStatus, len(plan.Fleets))
	for _, st := range plan.Fleets {
		for _, it := range started {
			if it.Fleet == st.Fleet {
				st.Started(it)
			}
		}
		for _, why := range t.traffic.blocks(st.Fleet) {
			st.Blocked = append(st.Blocked, reconcile.Block{Cause: reconcile.CauseTrafficBackend, Detail: why})
		}
		t.cfg.Metrics.Fleet(st)
		byName[st.Fleet] = st
	}
	judged := t.Judged()
	t.cfg.Publish(&Snapshot{At: now, build: func() []api.Fleet { return t.fleetRows(v, in, byName, started, judged) }})
}

// fleetRows is the status of every fleet: what the pass's input and plan
// say of each and of its instances.
func (t *Term) fleetRows(v view, in reconcile.Input, byName map[string]reconcile.FleetStatus, started []*state.Intent, judged map[string]Judgement) []api.Fleet {
	startedBy := map[string]*state.Intent{}
	for _, it := range started {
		startedBy[it.InstanceID] = it
	}
	fleets := make([]api.Fleet, 0, len(in.Fleets))
	for _, fi := range in.Fleets {
		d := fi.Desired
		st := byName[d.Spec.Name]
		f := api.FleetHeader(d, v.stats[d.Spec.Name])
		f.Desired, f.UpToDate, f.Drifted, f.BackoffUntil = st.Desired, st.UpToDate, st.Drifted, st.BackoffUntil
		for _, b := range st.Blocked {
			f.Blocked = append(f.Blocked, api.Block{Cause: string(b.Cause), Detail: b.Detail})
		}
		f.Instances = make([]api.Instance, 0, len(fi.Instances))
		for _, x := range fi.Instances {
			if x.Open == nil && startedBy[x.ID] != nil {
				x.Open = startedBy[x.ID]
			}
			row := instanceRow(d, x, st.Instances[x.ID].State, judged[x.ID], x.Drift)
			row.Traffic = string(st.Instances[x.ID].Traffic)
			row.Flapping, row.Recovering = st.Instances[x.ID].Flapping, st.Instances[x.ID].Recovering
			if row.Traffic == string(reconcile.TrafficDraining) {
				row.TrafficConnections = t.traffic.connectionsOf(x.ID)
			}
			f.Instances = append(f.Instances, row)
		}
		for _, it := range started {
			if it.Kind == state.Launch && it.Fleet == d.Spec.Name {
				f.Instances = append(f.Instances, api.Instance{ID: it.InstanceID, Fleet: it.Fleet, ImageDigest: it.ImageDigest,
					State: string(st.Instances[it.InstanceID].State), Intent: intentText(it), CreatedAt: it.CreatedAt})
			}
		}
		for s, n := range st.States {
			f.States[string(s)] = n
		}
		fleets = append(fleets, f)
	}
	return fleets
}

// instanceRow is what the API shows of an instance: what is recorded and
// observed of it, its state as the planner classified it, its open
// intent, the cluster's verdict and its drift finding.
func instanceRow(d *state.DesiredFleet, x reconcile.Inst, s reconcile.InstanceState, j Judgement, fd *instance.Finding) api.Instance {
	ai := api.InstanceOf(x.ID, d.Spec.Name, x.Record, x.Observed)
	ai.State = string(s)
	ai.Orphan = x.Record == nil && x.Open == nil
	if o := x.Observed; o != nil {
		t := d.Target()
		ai.UpToDate = o.ImageDigest == t.ImageDigest && o.TemplateHash == t.TemplateHash
	}
	ai.HealthSince = j.Since
	ai.Health, ai.Evidence, ai.FailingOn, ai.HealthyOn = string(j.Health), j.Evidence, j.FailingOn, j.HealthyOn
	if fd != nil {
		ai.Drift = fd.Evidence
		ai.UpToDate = false
	}
	if x.Open != nil {
		ai.Intent = intentText(x.Open)
	}
	if s == reconcile.StateExited {
		ai.Evidence = append(ai.Evidence, "exited: "+x.Observed.ExitReason)
	}
	return ai
}

// intentText is how the API shows an open intent.
func intentText(it *state.Intent) string {
	return string(it.Kind) + ": " + it.Reason
}
