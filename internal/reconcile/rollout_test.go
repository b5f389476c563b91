package reconcile

import (
	"strings"
	"testing"
	"time"

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
