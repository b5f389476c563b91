package reconcile

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"pgregory.net/rapid"

	"github.com/immutd/immutd/internal/quantity"
	"github.com/immutd/immutd/internal/state"
)

// versioned gives the fleet two kept versions: 1 (imgOld, stable) and 2
// (imgNew, the file's, rolling).
func versioned(d *state.DesiredFleet) {
	d.Versions = []state.Version{
		{N: 1, ImageDigest: imgOld, TemplateHash: tmplCur, Outcome: state.VersionStable},
		{N: 2, ImageDigest: imgNew, TemplateHash: tmplCur, Outcome: state.VersionRolling},
	}
	d.Rollout = &state.RolloutState{Version: 2, StartedAt: t0.Add(-time.Minute), LastProgressAt: t0.Add(-time.Minute)}
}

func TestRolloutPausedReplacesNoOutdatedInstance(t *testing.T) {
	d := desired(3, versioned, func(d *state.DesiredFleet) { d.Rollout.Paused = true })
	fi := FleetInput{Desired: d, Instances: []Inst{inst("a", oldImage), inst("b", oldImage), inst("c"), inst("d", oldImage, health(NeverHealthy))}}
	res := Plan(Input{Now: t0, Fleets: []FleetInput{fi}})
	// The never-healthy one is still healed (three instances are kept for
	// size 3, so it is not replaced); the healthy outdated ones stay.
	if got := strings.Join(brief(res.Actions), " "); got != "terminate:d:never_healthy" {
		t.Fatalf("paused rollout: %s", got)
	}
	st := res.Fleets[0]
	if st.UpToDate != 1 || st.Rollout.Outdated != 3 || st.Rollout.Available != 1 || st.Rollout.Version != 2 {
		t.Fatalf("status %+v rollout %+v", st.UpToDate, st.Rollout)
	}
	// The plan says why the outdated ones stay.
	held := 0
	for _, h := range res.Held {
		if h.Guard == GuardRolloutPaused && h.Reason == ReasonDriftImage {
			held++
		}
	}
	if held != 2 {
		t.Fatalf("%d outdated instances held by the paused rollout, want 2 (a and b): %+v", held, res.Held)
	}
	d.Rollout.Paused = false
	fi.Instances = fi.Instances[:3]
	res = Plan(Input{Now: t0, Fleets: []FleetInput{fi}})
	if got := strings.Join(brief(res.Actions), " "); got != "launch:rollout" {
		t.Fatalf("resumed rollout: %s", got)
	}
}

func TestRevertTargetsTheOlderVersion(t *testing.T) {
	d := desired(2, versioned, func(d *state.DesiredFleet) {
		d.Rollout = nil
		d.Revert = &state.Revert{To: 1, From: 2, Reason: "rollout failed", At: t0}
	})
	// b runs version 2 (the file's): under the revert it is outdated.
	fi := FleetInput{Desired: d, Instances: []Inst{inst("a", oldImage), inst("b")}}
	res := Plan(Input{Now: t0, Fleets: []FleetInput{fi}})
	if got := strings.Join(brief(res.Actions), " "); got != "launch:rollout" {
		t.Fatalf("revert: %s", got)
	}
	st := res.Fleets[0]
	if st.Rollout.Version != 1 || st.Rollout.ImageDigest != imgOld || st.Rollout.Available != 1 || st.Rollout.Outdated != 1 {
		t.Fatalf("rollout status under a revert: %+v", st.Rollout)
	}
}

func TestRolloutFailingCountsOnlyTheTargetVersion(t *testing.T) {
	d := desired(3, versioned)
	fi := FleetInput{Desired: d, Instances: []Inst{inst("a", oldImage), inst("b", health(Unhealthy)), inst("c", oldImage, health(Unhealthy)), inst("n")}}
	st := Plan(Input{Now: t0, Fleets: []FleetInput{fi}}).Fleets[0]
	if strings.Join(st.Rollout.Failing, ",") != "b" {
		t.Fatalf("failing on the target version: %v", st.Rollout.Failing)
	}
}

func TestRevertIsFastTracked(t *testing.T) {
	d := desired(2, versioned, func(d *state.DesiredFleet) {
		d.Rollout = nil
		d.Revert = &state.Revert{To: 1, From: 2, Reason: "rollout failed", At: t0}
		d.Spec.Remediation.MaxUnhealthy = quantity.Count(0)
	})
	// Both instances run the failed version 2 and fail: no breaker, storm
	// or rate holds their replacement by version 1.
	fi := FleetInput{Desired: d, Instances: []Inst{inst("a", health(Unhealthy)), inst("b", health(Unhealthy)), inst("c", oldImage)}}
	res := Plan(Input{Now: t0, Fleets: []FleetInput{fi}})
	if got := strings.Join(brief(res.Actions), " "); got != "terminate:a:drift_image" { // size + max_surge are live: it goes first
		t.Fatalf("revert of failing instances: %s (blocked %+v)", got, res.Fleets[0].Blocked)
	}
}

func canaryOf(n int) func(*state.DesiredFleet) {
	return func(d *state.DesiredFleet) {
		d.Spec.Rollout.Canary = &state.CanarySpec{Count: quantity.Count(n), PromoteAfter: time.Minute}
	}
}

func TestCanaryRunsNextToTheOldInstances(t *testing.T) {
	d := desired(3, versioned, canaryOf(1))
	old := []Inst{inst("a", oldImage), inst("b", oldImage), inst("c", oldImage)}
	res := Plan(Input{Now: t0, Fleets: []FleetInput{{Desired: d, Instances: old}}})
	if got := strings.Join(brief(res.Actions), " "); got != "launch:scale_up" {
		t.Fatalf("canary phase: %s", got)
	}
	// With its canary up, nothing more: the old instances keep serving.
	withCanary := append(append([]Inst(nil), old...), inst("n", healthyFor(2*time.Minute)))
	res = Plan(Input{Now: t0, Fleets: []FleetInput{{Desired: d, Instances: withCanary}}})
	st := res.Fleets[0]
	if len(res.Actions) != 0 || st.Rollout.Canary != 1 || st.Rollout.Available != 1 || st.Rollout.Outdated != 3 || st.Rollout.ReadySince.IsZero() {
		t.Fatalf("canary up: %v, rollout %+v", brief(res.Actions), st.Rollout)
	}
	// Promoted: the old instances are replaced, the canary's surplus goes.
	d.Rollout.Promoted = true
	res = Plan(Input{Now: t0, Fleets: []FleetInput{{Desired: d, Instances: withCanary}}})
	if got := strings.Join(brief(res.Actions), " "); got != "terminate:a:drift_image" {
		t.Fatalf("promoted: %s", got)
	}
}

func TestBlueGreenSwitchesInOneStep(t *testing.T) {
	bg := func(switched bool) *state.DesiredFleet {
		d := gatedFleet(3, versioned, func(d *state.DesiredFleet) {
			d.Spec.Rollout.BlueGreen = true
			d.Rollout.Switched = switched
		})
		return d
	}
	old := []Inst{inst("a", oldImage, admitted), inst("b", oldImage, admitted), inst("c", oldImage, admitted)}
	plan := func(d *state.DesiredFleet, insts ...Inst) Result {
		return Plan(Input{Now: t0, Fleets: []FleetInput{{Desired: d, Instances: append(append([]Inst(nil), old...), insts...)}}})
	}
	// Preview: the whole new set is launched next to the old one.
	if got := strings.Join(brief(plan(bg(false)).Actions), " "); got != "launch:scale_up launch:scale_up launch:scale_up" {
		t.Fatalf("preview: %s", got)
	}
	ready := []Inst{inst("x", healthyFor(time.Minute)), inst("y", healthyFor(time.Minute)), inst("z", healthyFor(time.Minute))}
	// Ready but not switched: nothing is admitted, the set is ready.
	res := plan(bg(false), ready...)
	if len(res.Actions) != 0 || res.Fleets[0].Rollout.Ready != 3 || res.Fleets[0].Rollout.OldAdmitted != 3 {
		t.Fatalf("ready before the switch: %v %+v", brief(res.Actions), res.Fleets[0].Rollout)
	}
	// Switched: the new set is admitted, all of it in one pass.
	if got := strings.Join(brief(plan(bg(true), ready...).Actions), " "); got != "admit:x:ready admit:y:ready admit:z:ready" {
		t.Fatalf("switch, admissions: %s", got)
	}
	// The new set admitted: the old set is drained, all of it in one pass.
	in := []Inst{inst("x", admitted), inst("y", admitted), inst("z", admitted)}
	if got := strings.Join(brief(plan(bg(true), in...).Actions), " "); got != "drain:a:switch drain:b:switch drain:c:switch" {
		t.Fatalf("switch, drains: %s", got)
	}
	// Drained, the old set is kept running during the bake.
	old = []Inst{inst("a", oldImage, drained), inst("b", oldImage, drained), inst("c", oldImage, drained)}
	res = plan(bg(true), in...)
	if len(res.Actions) != 0 || res.Fleets[0].Rollout.OldAdmitted != 0 || res.Fleets[0].Rollout.Available != 3 {
		t.Fatalf("bake: %v %+v", brief(res.Actions), res.Fleets[0].Rollout)
	}
}

// TestBlueGreenNeverMixesAfterTheSwitch: after a blue-green switch, no
// instance of the old set is ever admitted again, and once the whole new
// set is admitted every old instance still in traffic is drained in the
// same pass; before the switch no new instance is admitted.
func TestBlueGreenNeverMixesAfterTheSwitch(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		switched := rapid.Bool().Draw(t, "switched")
		size := rapid.IntRange(1, 5).Draw(t, "size")
		d := gatedFleet(size, versioned, func(d *state.DesiredFleet) {
			d.Spec.Rollout.BlueGreen = true
			d.Rollout.Switched = switched
			d.Spec.Traffic.MinReady = 0
		})
		var insts []Inst
		for i := range rapid.IntRange(0, 2*size).Draw(t, "instances") {
			in := inst(fmt.Sprintf("i%d", i), healthyFor(time.Minute))
			if rapid.Bool().Draw(t, "old") {
				oldImage(&in)
			}
			switch rapid.IntRange(0, 2).Draw(t, "traffic") {
			case 0:
				admitted(&in)
			case 1:
				drained(&in)
			}
			insts = append(insts, in)
		}
		res := Plan(Input{Now: t0, Fleets: []FleetInput{{Desired: d, Instances: insts}}})
		byID := map[string]*Inst{}
		for i := range insts {
			byID[insts[i].ID] = &insts[i]
		}
		newAdmitted, oldInTraffic, drainedOld := 0, 0, 0
		for _, in := range insts {
			isOld := in.Observed.ImageDigest == imgOld
			switch {
			case !isOld && in.Record.Admitted:
				newAdmitted++
			case isOld && in.Record.Admitted:
				oldInTraffic++
			}
		}
		for _, a := range res.Actions {
			in := byID[a.InstanceID]
			if in == nil {
				continue
			}
			isOld := in.Observed.ImageDigest == imgOld
			switch {
			case a.Kind == ActAdmit && isOld && switched:
				t.Fatalf("switched, yet old instance %s admitted: %v", a.InstanceID, brief(res.Actions))
			case a.Kind == ActAdmit && !isOld && !switched:
				t.Fatalf("not switched, yet new instance %s admitted: %v", a.InstanceID, brief(res.Actions))
			case a.Kind == ActDrain && isOld:
				drainedOld++
			}
		}
		if switched && newAdmitted >= size && drainedOld != oldInTraffic {
			t.Fatalf("the whole new set is admitted but %d of %d old instances in traffic are drained: %v", drainedOld, oldInTraffic, brief(res.Actions))
		}
	})
}
