package leader

import (
	"testing"
	"time"

	"github.com/immutd/immutd/internal/analysis"
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
	checkpointed := func(r *state.RolloutState) *state.DesiredFleet {
		f := fleet(r, 0)
		f.Spec.Size = 4
		f.Spec.Rollout.Checkpoints = []quantity.Q{quantity.Percent(50)}
		f.Spec.Rollout.ProgressDeadline = time.Hour
		return f
	}
	timedPause := func(until time.Time) *state.RolloutState {
		r := rolling()
		r.Paused, r.PausedUntil, r.Checkpoints = true, until, 1
		return r
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
		{"a checkpoint reached pauses", checkpointed(rolling()), status(2, 2), t0.Add(time.Second), state.StepCheckpoint},
		{"below the checkpoint: progress", checkpointed(rolling()), status(1, 3), t0.Add(time.Second), ""},
		{"a timed checkpoint's pause ends by itself", checkpointed(timedPause(t0.Add(time.Minute))), status(2, 2), t0.Add(time.Minute), state.StepResume},
		{"a timed checkpoint's pause holds until then", checkpointed(timedPause(t0.Add(time.Minute))), status(2, 2), t0.Add(59 * time.Second), ""},
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

func TestAnalysisVerdict(t *testing.T) {
	spec := &state.AnalysisSpec{Prometheus: "http://127.0.0.1:9090", Interval: time.Second, Metrics: []state.AnalysisMetric{
		{Name: "errors", Query: "e", Success: "result < 1", Failure: "result >= 1", ConsecutiveErrorLimit: 4},
		{Name: "latency", Query: "l", Success: "result < 1", ConsecutiveErrorLimit: 4, DryRun: true},
	}}
	fleet := func(t map[string]analysis.Tally) *state.DesiredFleet {
		return &state.DesiredFleet{Spec: state.FleetSpec{Rollout: state.RolloutSpec{Analysis: spec}}, Rollout: &state.RolloutState{Version: 2, Analysis: t}}
	}
	ok := analysis.Tally{}.Add(analysis.PhaseSuccessful, "0")
	bad := analysis.Tally{}.Add(analysis.PhaseFailed, "3")
	unsure := analysis.Tally{}.Add(analysis.PhaseInconclusive, "?")
	cases := []struct {
		name    string
		tallies map[string]analysis.Tally
		verdict string
		passed  bool
	}{
		{"nothing measured yet: not passed", nil, "", false},
		{"measured, no count: passes", map[string]analysis.Tally{"errors": ok}, "", true},
		{"a failure fails it", map[string]analysis.Tally{"errors": bad}, state.StepFailed, false},
		{"inconclusive pauses it", map[string]analysis.Tally{"errors": unsure}, "inconclusive", false},
		{"a dry-run failure decides nothing", map[string]analysis.Tally{"errors": ok, "latency": bad}, "", true},
	}
	for _, tc := range cases {
		v, why, passed := analysisVerdict(fleet(tc.tallies))
		if v != tc.verdict || passed != tc.passed || (v != "" && why == "") {
			t.Errorf("%s: verdict %q (%s), passed %v; want %q, %v", tc.name, v, why, passed, tc.verdict, tc.passed)
		}
	}
	if got := expandQuery(`x{image_digest="{{image_digest}}",fleet="{{fleet}}",v="{{version}}"}`, &state.DesiredFleet{Spec: state.FleetSpec{Name: "web"}, ImageDigest: "sha256:a",
		Versions: []state.Version{{N: 7, ImageDigest: "sha256:a"}}}); got != `x{image_digest="sha256:a",fleet="web",v="7"}` {
		t.Errorf("expandQuery: %s", got)
	}
}
