package leader

import (
	"testing"
	"time"

	"github.com/immutd/immutd/internal/quantity"
	"github.com/immutd/immutd/internal/reconcile"
	"github.com/immutd/immutd/internal/state"
)

func TestRolloutStepOf(t *testing.T) {
	t0 := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	fleet := func(r *state.RolloutState, bake time.Duration) *state.DesiredFleet {
		return &state.DesiredFleet{Spec: state.FleetSpec{Name: "web", Size: 2, Rollout: state.RolloutSpec{ProgressDeadline: time.Minute, Bake: bake}}, Rollout: r}
	}
	rolling := func() *state.RolloutState {
		return &state.RolloutState{Version: 2, StartedAt: t0, LastProgressAt: t0, Available: 1}
	}
	status := func(avail, outdated int, failing ...string) reconcile.FleetStatus {
		return reconcile.FleetStatus{Rollout: reconcile.RolloutStatus{Version: 2, Available: avail, Outdated: outdated, Failing: failing}}
	}
	canary := func(r *state.RolloutState, after time.Duration) *state.DesiredFleet {
		f := fleet(r, 0)
		f.Spec.Rollout.Canary = &state.CanarySpec{Count: quantity.Count(1), PromoteAfter: after}
		f.Spec.Rollout.ProgressDeadline = 10 * time.Minute
		return f
	}
	canaryStatus := func(avail int, ready time.Time) reconcile.FleetStatus {
		return reconcile.FleetStatus{Rollout: reconcile.RolloutStatus{Version: 2, Available: avail, Outdated: 2, Canary: 1, ReadySince: ready}}
	}
	completed := rolling()
	completed.CompletedAt = t0
	paused := rolling()
	paused.Paused = true
	cases := []struct {
		name string
		f    *state.DesiredFleet
		st   reconcile.FleetStatus
		now  time.Time
		want string
	}{
		{"no rollout", fleet(nil, 0), status(2, 0), t0, ""},
		{"paused", fleet(paused, 0), status(0, 2, "x"), t0, ""},
		{"a failing instance of the version fails it", fleet(rolling(), 0), status(1, 1, "web-x"), t0, state.StepFailed},
		{"no progress for the deadline fails it", fleet(rolling(), 0), status(1, 1), t0.Add(61 * time.Second), state.StepFailed},
		{"more available is progress", fleet(rolling(), 0), status(2, 1), t0.Add(time.Second), state.StepProgress},
		{"all available, none outdated: complete", fleet(rolling(), 0), status(2, 0), t0.Add(time.Second), state.StepComplete},
		{"baking", fleet(completed, time.Minute), status(2, 0), t0.Add(30 * time.Second), ""},
		{"baked: stable", fleet(completed, time.Minute), status(2, 0), t0.Add(time.Minute), state.StepStable},
		{"failing while baking fails it", fleet(completed, time.Minute), status(1, 0, "web-x"), t0.Add(30 * time.Second), state.StepFailed},
		{"canaries available for promote_after: promote", canary(rolling(), time.Minute), canaryStatus(1, t0), t0.Add(time.Minute), state.StepPromote},
		{"canaries not available long enough", canary(rolling(), time.Minute), canaryStatus(1, t0), t0.Add(59 * time.Second), ""},
		{"manual promotion only", canary(rolling(), 0), canaryStatus(1, t0), t0.Add(time.Hour), state.StepFailed},
		{"a status of another version is ignored", fleet(rolling(), 0), reconcile.FleetStatus{Rollout: reconcile.RolloutStatus{Version: 1, Failing: []string{"x"}}}, t0, ""},
	}
	for _, tc := range cases {
		got := ""
		if c := rolloutStepOf(tc.f, tc.st, tc.now); c != nil {
			got = c.Step
		}
		if got != tc.want {
			t.Errorf("%s: step %q, want %q", tc.name, got, tc.want)
		}
	}
}
