package leader

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/immutd/immutd/internal/analysis"
	"github.com/immutd/immutd/internal/state"
)

// queryTimeout bounds one analysis query.
const queryTimeout = 10 * time.Second

// analyze takes the analysis measurements of rollouts in progress, apart
// from the passes (a slow Prometheus must not delay them): every second
// it looks for the fleets whose rollout has an analysis due, queries
// each metric and journals the round; the passes judge the tallies.
func (t *Term) analyze(ctx context.Context) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		for _, f := range t.dueAnalyses(t.cfg.Now()) {
			if ctx.Err() != nil {
				return
			}
			t.measure(ctx, f)
		}
	}
}

// dueAnalyses are the fleets whose rollout's next analysis round is due.
func (t *Term) dueAnalyses(now time.Time) []*state.DesiredFleet {
	var due []*state.DesiredFleet
	t.cfg.Journal.Read(func(st *state.State) {
		for _, name := range slices.Sorted(maps.Keys(st.Fleets)) {
			f := st.Fleets[name]
			a, r := f.Spec.Rollout.Analysis, f.Rollout
			if a == nil || r == nil || r.Paused || f.Revert != nil || now.Sub(r.MeasuredAt) < a.Interval {
				continue
			}
			due = append(due, f) // desired fleets are replaced, never changed in place
		}
	})
	return due
}

// measure runs one analysis round of a fleet's rollout and journals it.
func (t *Term) measure(ctx context.Context, f *state.DesiredFleet) {
	a, r := f.Spec.Rollout.Analysis, f.Rollout
	c, err := analysis.NewClient(a.Prometheus, nil)
	var round []state.Measurement
	for i, m := range a.Judged() {
		var result []float64
		qerr := err
		if qerr == nil {
			qctx, cancel := context.WithTimeout(ctx, queryTimeout)
			result, qerr = c.Query(qctx, expandQuery(m.Query, f), time.Time{})
			cancel()
		}
		if ctx.Err() != nil {
			return
		}
		phase, detail := analysis.Measure(m, result, qerr)
		round = append(round, state.Measurement{Metric: a.Metrics[i].Name, Phase: phase, Detail: detail})
	}
	step := &state.RolloutStep{Fleet: f.Spec.Name, Step: state.StepMeasure, Of: r.Version, Measurements: round, At: t.cfg.Now(), Node: t.cfg.Node}
	if _, err := t.cfg.Journal.Apply(ctx, step); err != nil && ctx.Err() == nil {
		t.log.Warn("could not record an analysis round", zap.String("fleet", f.Spec.Name), zap.Error(err))
	}
	t.cfg.Notify()
}

// expandQuery puts the rollout's fleet, version and image digest into a
// query's {{fleet}}, {{version}} and {{image_digest}}.
func expandQuery(q string, f *state.DesiredFleet) string {
	t := f.Target()
	return strings.NewReplacer("{{fleet}}", f.Spec.Name, "{{version}}", fmt.Sprint(t.Version), "{{image_digest}}", t.ImageDigest).Replace(q)
}

// analysisVerdict judges a rollout's analysis: "failed" or "inconclusive"
// with why, or "" (running or successful). passed says whether it lets
// the rollout on (a canary promoted, a version stable): successful, or
// running with every decisive metric that has a count done and every
// other measured at least once — an analysis without a count ends, as
// successful, with the step it gates, unless it failed.
func analysisVerdict(f *state.DesiredFleet) (verdict, why string, passed bool) {
	a, r := f.Spec.Rollout.Analysis, f.Rollout
	if a == nil {
		return "", "", true
	}
	metrics := a.Judged()
	tallies := make([]analysis.Tally, len(metrics))
	passed = true
	for i, m := range metrics {
		tallies[i] = r.Analysis[m.Name]
		out := analysis.Judge(m, tallies[i])
		switch {
		case m.DryRun:
		case out == analysis.OutcomeFailed || out == analysis.OutcomeInconclusive:
			why = fmt.Sprintf("analysis metric %s is %s (last: %s)", m.Name, out, tallies[i].Last)
		case out == analysis.OutcomeRunning && (m.Count > 0 || tallies[i].Measured == 0):
			passed = false
		}
	}
	switch analysis.Decide(metrics, tallies) {
	case analysis.OutcomeFailed:
		return state.StepFailed, why, false
	case analysis.OutcomeInconclusive:
		return "inconclusive", why, false
	}
	return "", "", passed
}
