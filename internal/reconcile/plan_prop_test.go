package reconcile

import (
	"fmt"
	"testing"
	"time"

	"pgregory.net/rapid"

	"github.com/immutd/immutd/internal/instance"
	"github.com/immutd/immutd/internal/quantity"
	"github.com/immutd/immutd/internal/state"
)

// genQuantity draws a count or a percentage.
func genQuantity(t *rapid.T, label string, maxCount int) quantity.Q {
	if rapid.Bool().Draw(t, label+"_pct") {
		return quantity.Percent(rapid.IntRange(0, 100).Draw(t, label+"_p"))
	}
	return quantity.Count(rapid.IntRange(0, maxCount).Draw(t, label+"_n"))
}

func genDesired(t *rapid.T) *state.DesiredFleet {
	size := rapid.IntRange(0, 8).Draw(t, "size")
	d := desired(size)
	d.Spec.Rollout.MaxSurge = genQuantity(t, "surge", 3)
	d.Spec.Rollout.MaxUnavailable = genQuantity(t, "unavail", 3)
	if size > 0 && d.Spec.Rollout.MaxSurge.Resolve(size, true) == 0 && d.Spec.Rollout.MaxUnavailable.Resolve(size, false) == 0 {
		d.Spec.Rollout.MaxSurge = quantity.Count(1) // config validation forbids both 0
	}
	d.Spec.Remediation.MaxUnhealthy = genQuantity(t, "maxunhealthy", 8)
	d.Spec.Remediation.MaxParallel = rapid.IntRange(1, 3).Draw(t, "maxparallel")
	d.Spec.Remediation.Enabled = rapid.Float64Range(0, 1).Draw(t, "enabled") < 0.85
	d.Spec.Drift.Orphans = rapid.SampledFrom([]string{state.OrphanAdopt, state.OrphanTerminate, state.OrphanIgnore}).Draw(t, "orphans")
	switch rapid.IntRange(0, 9).Draw(t, "lifecycle") {
	case 0:
		d.Unconfigured = true
	case 1:
		d.Unconfigured, d.Draining = true, true
	}
	if rapid.Float64Range(0, 1).Draw(t, "gated") < 0.5 {
		d.Spec.Traffic = &state.TrafficSpec{MinReady: time.Duration(rapid.IntRange(0, 30).Draw(t, "min_ready")) * time.Second,
			KeepMin: rapid.IntRange(0, 3).Draw(t, "keep_min"), Files: []state.TrafficFile{{Name: "t", Path: "/t.json"}}}
	}
	return d
}

func genInst(t *rapid.T, i int) Inst {
	id := fmt.Sprintf("i%02d", i)
	in := inst(id, age(time.Duration(rapid.IntRange(1, 1000).Draw(t, "age"))*time.Minute))
	in.Health = rapid.SampledFrom([]Health{Unknown, Starting, Healthy, Healthy, Healthy, Unhealthy, NeverHealthy}).Draw(t, "health")
	if rapid.Float64Range(0, 1).Draw(t, "old") < 0.3 {
		oldImage(&in)
	}
	if rapid.Float64Range(0, 1).Draw(t, "tmpl") < 0.1 {
		in.Observed.TemplateHash = "tmpl-old"
	}
	if rapid.Float64Range(0, 1).Draw(t, "mut") < 0.1 {
		mutated(&in)
	}
	if in.Health == Healthy {
		in.HealthySince = t0.Add(-time.Duration(rapid.IntRange(0, 60).Draw(t, "healthy_for")) * time.Second)
	}
	// Traffic flags, as the state keeps them (only gated fleets read them).
	switch rapid.IntRange(0, 9).Draw(t, "traffic") {
	case 0, 1, 2, 3, 4:
		in.Record.Admitted = true
	case 5:
		in.Record.Drained = true
	}
	switch rapid.IntRange(0, 23).Draw(t, "shape") {
	case 0:
		exited(&in)
	case 1:
		gone(&in)
	case 2:
		orphan(&in)
	case 3:
		opening(state.Terminate)(&in)
	case 4:
		in = launching(id)
	case 5:
		if in.Record.Admitted {
			opening(state.Drain)(&in)
		}
	case 6:
		if !in.Record.Admitted {
			opening(state.Admit)(&in)
		}
	}
	return in
}

func genFleet(t *rapid.T) FleetInput {
	fi := FleetInput{Desired: genDesired(t)}
	n := rapid.IntRange(0, 12).Draw(t, "instances")
	for i := 0; i < n; i++ {
		fi.Instances = append(fi.Instances, genInst(t, i))
	}
	if rapid.Float64Range(0, 1).Draw(t, "obserr") < 0.05 {
		fi.ObserveError = "list failed"
	}
	if rapid.Float64Range(0, 1).Draw(t, "failures") < 0.2 {
		fi.Stats = state.FleetStats{LaunchFailures: rapid.IntRange(1, 6).Draw(t, "nfail"), LastFailureAt: t0.Add(-time.Duration(rapid.IntRange(0, 120).Draw(t, "lastfail")) * time.Second)}
	}
	return fi
}

// Independent definitions of the quantities the invariants talk about.
func ignored(fi *FleetInput, in *Inst) bool {
	return in.Record == nil && in.Open == nil && fi.Desired.Spec.Drift.Orphans == state.OrphanIgnore
}

func isLive(in *Inst) bool {
	return (in.Open != nil && in.Open.Kind == state.Launch) || (in.Observed != nil && in.Observed.Phase == instance.Running)
}

// isComing: a current instance launching or starting.
func isComing(fi *FleetInput, in *Inst) bool {
	if in.Open != nil {
		return in.Open.Kind == state.Launch
	}
	d := fi.Desired
	return in.Observed != nil && in.Observed.Phase == instance.Running && in.Record != nil && in.Drift == nil &&
		in.Observed.ImageDigest == d.ImageDigest && in.Observed.TemplateHash == d.TemplateHash &&
		(in.Health == Unknown || in.Health == Starting)
}

// isAdmitted: in a gated fleet, admitted to traffic.
func isAdmitted(fi *FleetInput, in *Inst) bool {
	return fi.Desired.Spec.Traffic.Gated() && in.Record != nil && in.Record.Admitted
}

// isAvailable: serving; in a gated fleet only while admitted.
func isAvailable(fi *FleetInput, in *Inst) bool {
	return in.Open == nil && in.Observed != nil && in.Observed.Phase == instance.Running && in.Health == Healthy &&
		(!fi.Desired.Spec.Traffic.Gated() || isAdmitted(fi, in))
}

// isOutgoing: an open intent takes the instance away (terminate, drain).
func isOutgoing(in *Inst) bool {
	return in.Open != nil && (in.Open.Kind == state.Terminate || in.Open.Kind == state.Drain)
}

func checkInvariants(t *rapid.T, fi *FleetInput, res Result) { checkInvariantsAt(t, t0, fi, res) }

// checkInvariantsAt checks a plan made at now.
func checkInvariantsAt(t *rapid.T, now time.Time, fi *FleetInput, res Result) {
	d := fi.Desired
	size := d.Spec.Size
	if d.Draining {
		size = 0
	}
	surge := d.Spec.Rollout.MaxSurge.Resolve(d.Spec.Size, true)
	unavail := d.Spec.Rollout.MaxUnavailable.Resolve(d.Spec.Size, false)
	byID := map[string]*Inst{}
	gated := d.Spec.Traffic.Gated()
	live, available, inflight, free, coming, members := 0, 0, 0, 0, 0, 0
	for i := range fi.Instances {
		in := &fi.Instances[i]
		byID[in.ID] = in
		if ignored(fi, in) {
			continue
		}
		if isLive(in) {
			live++
		}
		if isAvailable(fi, in) {
			available++
		}
		if isAdmitted(fi, in) && in.Open == nil && in.Observed != nil && in.Observed.Phase == instance.Running {
			members++
		}
		if isOutgoing(in) {
			inflight++
		} else if isLive(in) {
			free++
		}
		if isComing(fi, in) {
			coming++
		}
	}
	launches, kills, availKills, sickKills, unhealthyKills, healthDrains, drains := 0, 0, 0, 0, 0, 0, 0
	seen := map[string]bool{}
	adopted := map[string]bool{}
	for _, a := range res.Actions {
		if a.Fleet != d.Spec.Name || a.Reason == "" {
			t.Fatalf("bad action %+v", a)
		}
		if a.Kind == ActLaunch {
			launches++
			continue
		}
		in := byID[a.InstanceID]
		if in == nil {
			t.Fatalf("action on unknown instance %+v", a)
		}
		// The one pair allowed: an orphan adopted and admitted in one pass.
		if seen[a.InstanceID] && !(a.Kind == ActAdmit && adopted[a.InstanceID]) {
			t.Fatalf("two actions on %s", a.InstanceID)
		}
		seen[a.InstanceID] = true
		if a.Kind == ActAdopt {
			adopted[a.InstanceID] = true
		}
		if in.Open != nil {
			t.Fatalf("action on %s which has an open intent", a.InstanceID)
		}
		if ignored(fi, in) {
			t.Fatalf("action on an orphan the policy ignores: %+v", a)
		}
		switch {
		case a.Kind == ActTerminate && isAdmitted(fi, in):
			t.Fatalf("terminate of %s, which is admitted to traffic: it must be drained first", a.InstanceID)
		case a.Kind == ActDrain && !isAdmitted(fi, in):
			t.Fatalf("drain of %s, which is not admitted (gated %v)", a.InstanceID, gated)
		case a.Kind == ActAdmit:
			minReady := d.Spec.Traffic.MinReady
			if !gated || isAdmitted(fi, in) || (in.Record == nil && !adopted[in.ID]) || in.Health != Healthy || in.HealthySince.IsZero() || now.Sub(in.HealthySince) < minReady {
				t.Fatalf("admit of %s: gated %v, health %q since %v (min_ready %v), record %v", a.InstanceID, gated, in.Health, in.HealthySince, minReady, in.Record)
			}
			continue
		}
		if a.Kind != ActTerminate && a.Kind != ActDrain {
			continue
		}
		if a.Kind == ActDrain && a.Running {
			drains++
		}
		running := in.Observed != nil && in.Observed.Phase == instance.Running
		if running != a.Running {
			t.Fatalf("Running flag %v on %+v", a.Running, a)
		}
		if running {
			kills++
			if in.Health != Healthy && in.Health != Unhealthy && in.Health != NeverHealthy {
				t.Fatalf("killed %s whose verdict is %q", a.InstanceID, in.Health)
			}
			if isAvailable(fi, in) {
				availKills++
			}
			if in.Health == Unhealthy || in.Health == NeverHealthy {
				sickKills++
				if a.Kind == ActDrain {
					healthDrains++
				}
			}
			if in.Health == Unhealthy && a.Kind == ActTerminate {
				unhealthyKills++ // a drain takes traffic away, not the instance
			}
			// Remediation disabled: nothing is killed for its health or an
			// in-place change (a rollout, a scale-down, a drain still kill).
			if !d.Spec.Remediation.Enabled && !d.Draining {
				switch a.Reason {
				case ReasonUnhealthy, ReasonNeverHealthy, ReasonDriftMutated, ReasonOrphan:
					t.Fatalf("remediation disabled, yet %s is killed for %s", a.InstanceID, a.Reason)
				}
			}
		}
	}
	st := res.Fleets[0]
	blocked := map[Cause]bool{}
	for _, b := range st.Blocked {
		blocked[b.Cause] = true
	}
	// Never more than max_surge extra instances.
	if launches > 0 && live+launches > size+surge {
		t.Fatalf("surge: %d live + %d launches > size %d + max_surge %d", live, launches, size, surge)
	}
	// On rollout, healthy instances never drop below size - max_unavailable
	// because of our kills.
	if floor := size - unavail; availKills > 0 && available-availKills < floor {
		t.Fatalf("availability: %d available, %d healthy killed, floor %d", available, availKills, floor)
	}
	// Nothing killed while blocked; with the breaker open only instances
	// beyond size + max_surge (a scale-down) may go.
	if (blocked[CauseProviderUnreachable] || blocked[CauseUnconfigured]) && kills > 0 {
		t.Fatalf("killed %d instances while blocked %v", kills, st.Blocked)
	}
	if blocked[CauseTooManyUnhealthy] && sickKills > max(free-(size+surge), 0) {
		t.Fatalf("breaker open: %d sick instances killed, only %d are beyond size %d + max_surge %d (%d free)", sickKills, free-(size+surge), size, surge, free)
	}
	// Surge-first: an unhealthy instance (not beyond size + max_surge)
	// goes only when enough are available without it, or when no
	// replacement can come first: none is launched or starting, and
	// max_surge leaves no room for one.
	if unhealthyKills > 0 && available < size-unavail && free <= size+surge {
		if launches > 0 || coming > 0 || live < size+surge && !blocked[CauseInstanceLimit] {
			t.Fatalf("surge-first: unhealthy killed with %d available (floor %d), %d launches, %d coming, %d live for size %d + max_surge %d",
				available, size-unavail, launches, coming, live, size, surge)
		}
	}
	if blocked[CauseProviderUnreachable] || blocked[CauseUnconfigured] {
		if len(res.Actions) > 0 {
			t.Fatalf("actions while %v: %v", st.Blocked, brief(res.Actions))
		}
	}
	// Fail open: drains for health never leave fewer than keep_min
	// (capped at size + max_surge - 1) members in the backends; beyond
	// size + max_surge no verdict is needed, so neither is keep_min.
	if gated && healthDrains > 0 {
		keepMin := min(d.Spec.Traffic.KeepMin, max(size+surge-1, 0))
		if members-drains < keepMin && healthDrains > max(free-(size+surge), 0) {
			t.Fatalf("keep_min %d: %d drains (%d for health) leave %d of %d members", keepMin, drains, healthDrains, members-drains, members)
		}
	}
	// Kills in flight never exceed max_parallel.
	if kills > 0 && inflight+kills > d.Spec.Remediation.MaxParallel {
		t.Fatalf("max_parallel %d: %d in flight + %d new kills", d.Spec.Remediation.MaxParallel, inflight, kills)
	}
}

// applyAsIntents is what committing the plan does to the planner's input:
// every action becomes an open intent (or, for adopt, a record).
func applyAsIntents(fi FleetInput, res Result, now time.Time) FleetInput {
	out := fi
	out.Instances = append([]Inst(nil), fi.Instances...)
	// The state records the time of every remediation kill it journals
	// (state.noteKill): the kill rates count them in the next plan.
	out.Stats.Kills = append([]time.Time(nil), fi.Stats.Kills...)
	next := 0
	for _, a := range res.Actions {
		switch a.Kind {
		case ActLaunch:
			id := fmt.Sprintf("new%02d", next)
			next++
			out.Instances = append(out.Instances, launching(id))
		default:
			for i := range out.Instances {
				in := &out.Instances[i]
				if in.ID != a.InstanceID {
					continue
				}
				kind := state.Terminate
				switch a.Kind {
				case ActAdopt:
					rec := state.Instance{ID: in.ID, Fleet: a.Fleet, ImageDigest: in.Observed.ImageDigest, TemplateHash: in.Observed.TemplateHash, CreatedAt: in.Observed.StartedAt, Adopted: true}
					in.Record = &rec
					continue
				case ActDrain:
					kind = state.Drain
				case ActAdmit:
					kind = state.Admit
				}
				in.Open = &state.Intent{OpID: "op-" + in.ID, Kind: kind, Fleet: a.Fleet, InstanceID: in.ID}
				if (kind == state.Drain || kind == state.Terminate && (in.Record == nil || !in.Record.Drained)) && isRemediation(a.Reason) {
					out.Stats.Kills = append(out.Stats.Kills, now)
				}
			}
		}
	}
	return out
}

func TestPlanSafetyInvariants(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		fi := genFleet(t)
		res := Plan(Input{Now: t0, Fleets: []FleetInput{fi}})
		checkInvariants(t, &fi, res)
	})
}

func TestPlanIsEmptyAfterItIsApplied(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		fi := genFleet(t)
		res := Plan(Input{Now: t0, Fleets: []FleetInput{fi}})
		after := applyAsIntents(fi, res, t0)
		again := Plan(Input{Now: t0, Fleets: []FleetInput{after}})
		if len(again.Actions) > 0 {
			t.Fatalf("first plan %v, plan after applying it %v", brief(res.Actions), brief(again.Actions))
		}
	})
}

// TestPlanConverges simulates a world where intents complete and new
// instances turn healthy: the fleet must reach size up-to-date healthy
// instances and an empty plan, without breaking the invariants on the way.
func TestPlanConverges(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		fi := genFleet(t)
		fi.ObserveError = ""
		fi.Stats = state.FleetStats{}
		fi.Desired.Unconfigured, fi.Desired.Draining = false, false
		fi.Desired.Spec.Remediation.Enabled = true
		fi.Desired.Spec.Remediation.MaxUnhealthy = quantity.Percent(100)
		// Convergence of the planner alone: no kill rate or storm guard
		// holds it (their own tests are in guards_prop_test.go).
		fi.Desired.Spec.Remediation.Rate = quantity.Rate{N: 256, Per: time.Second}
		fi.Desired.Spec.Remediation.SecondaryRate = quantity.Rate{N: 256, Per: time.Second}
		fi.Desired.Spec.Remediation.NoStormGuard = true
		// Instances that exist now settle on a verdict: unknown ones are judged.
		for i := range fi.Instances {
			if fi.Instances[i].Health == Unknown || fi.Instances[i].Health == Starting {
				fi.Instances[i].Health = rapid.SampledFrom([]Health{Healthy, Unhealthy}).Draw(t, "settle")
				fi.Instances[i].HealthySince = t0
			}
		}
		now := t0
		seq := 0
		size := fi.Desired.Spec.Size
		maxLive := size + fi.Desired.Spec.Rollout.MaxSurge.Resolve(size, true)
		prevLive := 0
		for i := range fi.Instances {
			if !ignored(&fi, &fi.Instances[i]) && isLive(&fi.Instances[i]) {
				prevLive++
			}
		}
		for round := 0; round < 6*size+20; round++ {
			res := Plan(Input{Now: now, Fleets: []FleetInput{fi}})
			checkInvariantsAt(t, now, &fi, res)
			starting := false
			for _, in := range fi.Instances {
				starting = starting || in.Health == Starting || in.Open != nil
			}
			if len(res.Actions) == 0 && !starting {
				break
			}
			// Commit, then complete every intent.
			fi = applyAsIntents(fi, res, now)
			var next []Inst
			for _, in := range fi.Instances {
				switch {
				case in.Open != nil && in.Open.Kind == state.Terminate:
					continue // terminated and forgotten
				case in.Open != nil && in.Open.Kind != state.Launch:
					// Drained or admitted: the record says so from now on.
					rec := *in.Record
					rec.Admitted, rec.Drained = in.Open.Kind == state.Admit, in.Open.Kind == state.Drain
					in.Record, in.Open = &rec, nil
					next = append(next, in)
				case in.Open != nil && in.Open.Kind == state.Launch:
					seq++
					n := inst(fmt.Sprintf("n%03d", seq), health(Starting), age(-time.Duration(round)*time.Minute))
					next = append(next, n)
				case in.Observed == nil || in.Observed.Phase != instance.Running:
					next = append(next, in) // cleaned up by a terminate next round
				default:
					if in.Health == Starting {
						in.Health = Healthy
						in.HealthySince = now
					}
					next = append(next, in)
				}
			}
			fi.Instances = next
			live := 0
			for i := range fi.Instances {
				if !ignored(&fi, &fi.Instances[i]) && isLive(&fi.Instances[i]) {
					live++
				}
			}
			// Starting above size+surge is possible (e.g. after a scale
			// down); growing while above it is not.
			if live > maxLive && live > prevLive {
				t.Fatalf("round %d: %d live instances > size+surge %d and more than before (%d)", round, live, maxLive, prevLive)
			}
			prevLive = live
			now = now.Add(31 * time.Second) // past any min_ready drawn
		}
		res := Plan(Input{Now: now, Fleets: []FleetInput{fi}})
		if len(res.Actions) > 0 {
			t.Fatalf("did not converge: still planning %v", brief(res.Actions))
		}
		st := res.Fleets[0]
		if st.UpToDate != size || st.States["healthy"] < size {
			t.Fatalf("converged to %d up to date, states %v, want size %d; blocked %v; instances %v", st.UpToDate, st.States, size, st.Blocked, st.Instances)
		}
	})
}

// TestPlanGlobalLimitsHold: over several fleets, launches never take the
// live instances above limits.max_instances nor the launches in flight
// above limits.max_launches_in_flight, and every fleet's own invariants
// hold too.
func TestPlanGlobalLimitsHold(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		n := rapid.IntRange(1, 4).Draw(t, "fleets")
		var fleets []FleetInput
		live, open := 0, 0
		for i := 0; i < n; i++ {
			fi := genFleet(t)
			fi.Desired.Spec.Name = fmt.Sprintf("f%d", i)
			for j := range fi.Instances {
				in := &fi.Instances[j]
				if !ignored(&fi, in) && isLive(in) {
					live++
				}
				if in.Open != nil && in.Open.Kind == state.Launch {
					open++
				}
			}
			fleets = append(fleets, fi)
		}
		lim := Limits{MaxInstances: rapid.IntRange(0, 30).Draw(t, "max_instances"), MaxLaunchesInFlight: rapid.IntRange(0, 6).Draw(t, "max_launches")}
		res := Plan(Input{Now: t0, Limits: lim, Fleets: fleets})
		launches := 0
		for _, a := range res.Actions {
			if a.Kind == ActLaunch {
				launches++
			}
		}
		if lim.MaxInstances > 0 && launches > max(lim.MaxInstances-live, 0) {
			t.Fatalf("%d launches with %d live, max_instances %d", launches, live, lim.MaxInstances)
		}
		if lim.MaxLaunchesInFlight > 0 && launches > max(lim.MaxLaunchesInFlight-open, 0) {
			t.Fatalf("%d launches with %d in flight, max_launches_in_flight %d", launches, open, lim.MaxLaunchesInFlight)
		}
		for i := range fleets {
			one := Result{Fleets: []FleetStatus{res.Fleets[i]}}
			for _, a := range res.Actions {
				if a.Fleet == fleets[i].Desired.Spec.Name {
					one.Actions = append(one.Actions, a)
				}
			}
			checkInvariants(t, &fleets[i], one)
		}
	})
}
