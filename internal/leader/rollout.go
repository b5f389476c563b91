package leader

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"time"

	"go.uber.org/zap"

	"github.com/immutd/immutd/internal/reconcile"
	"github.com/immutd/immutd/internal/state"
)

// trackRollouts journals what the pass saw of each fleet's rollout: a
// pinned image or launch template that is no version yet becomes one
// (its rollout starts); an instance of the rollout's version that fails,
// or no progress within progress_deadline, fails it (the state applies
// the fleet's on_failure); more of its instances available is progress;
// all of them is completion, and completion that lasted the bake makes
// the version stable.
func (t *Term) trackRollouts(ctx context.Context, v view, plan reconcile.Result, now time.Time) {
	byFleet := make(map[string]reconcile.FleetStatus, len(plan.Fleets))
	for _, st := range plan.Fleets {
		byFleet[st.Fleet] = st
	}
	var cmds []state.Command
	for _, name := range slices.Sorted(maps.Keys(v.fleets)) {
		f := v.fleets[name]
		if f.NeedsVersion() {
			cmds = append(cmds, &state.RecordVersion{Fleet: name, ImageDigest: f.ImageDigest, TemplateHash: f.TemplateHash, At: now, Node: t.cfg.Node})
			continue
		}
		st, ok := byFleet[name]
		if !ok || !st.Guarded {
			continue // nothing is judged of a fleet nothing is done for
		}
		if c := rolloutStepOf(f, st, now); c != nil {
			c.Fleet, c.At, c.Node = name, now, t.cfg.Node
			cmds = append(cmds, c)
		}
	}
	for _, c := range cmds {
		res, err := t.cfg.Journal.Apply(ctx, c)
		if err != nil {
			if ctx.Err() == nil {
				t.log.Warn("could not record a rollout step", zap.Error(err))
			}
			return
		}
		if rs, ok := c.(*state.RolloutStep); ok {
			t.logStep(rs, res)
		}
	}
	if len(cmds) > 0 {
		// A new version, a failure's revert or pause, a promotion, a
		// switch or a checkpoint changes what the next plan does: plan it
		// now rather than at the next interval.
		t.cfg.Notify()
	}
}

func (t *Term) logStep(c *state.RolloutStep, res state.Result) {
	switch {
	case res.Err != "":
		t.log.Warn("rollout step refused", zap.String("fleet", c.Fleet), zap.String("step", c.Step), zap.String("reason", res.Err))
	case c.Step == state.StepFailed:
		t.log.Warn("rollout failed", zap.String("fleet", c.Fleet), zap.Int("version", c.Of), zap.String("reason", c.Detail))
	case c.Step != state.StepProgress:
		t.log.Info("rollout "+c.Step, zap.String("fleet", c.Fleet), zap.Int("version", c.Of))
	}
}

// checkpointReached says whether a rolling (or promoted canary) rollout
// reached its next checkpoint: that share of the fleet's size runs the new
// version, available, and the rollout is not complete.
func checkpointReached(f *state.DesiredFleet, rs reconcile.RolloutStatus, size int) bool {
	r, cps := f.Rollout, f.Spec.Rollout.Checkpoints
	if r.Checkpoints >= len(cps) || !r.CompletedAt.IsZero() || rs.BlueGreen || rs.Canary > 0 || size == 0 || rs.Outdated == 0 {
		return false
	}
	return rs.Available*100 >= cps[r.Checkpoints].Value*size
}

// progressOf is how many instances of a rollout's version count as
// progress: available ones, or in a blue-green rollout before its switch
// ready ones (they are not admitted until then).
func progressOf(rs reconcile.RolloutStatus) int {
	if rs.BlueGreen {
		return max(rs.Available, rs.Ready)
	}
	return rs.Available
}

// canaryPromote says whether a canary rollout promotes itself now: every
// canary has been available for promote_after (0: only an operator
// promotes).
func canaryPromote(f *state.DesiredFleet, rs reconcile.RolloutStatus, now time.Time) bool {
	after := f.Spec.Rollout.Canary.PromoteAfter
	return after > 0 && !rs.ReadySince.IsZero() && now.Sub(rs.ReadySince) >= after
}

// rolloutStepOf is the step a pass's status of a fleet means for its
// rollout, nil when none.
func rolloutStepOf(f *state.DesiredFleet, st reconcile.FleetStatus, now time.Time) *state.RolloutStep {
	r := f.Rollout
	if r != nil && r.Paused && !r.PausedUntil.IsZero() && !now.Before(r.PausedUntil) && f.Revert == nil {
		return &state.RolloutStep{Step: state.StepResume, Of: r.Version, Detail: "checkpoint_pause over"}
	}
	if r == nil || r.Paused || f.Revert != nil || st.Rollout.Version != r.Version {
		return nil
	}
	ro := rolloutView{f: f, r: r, rs: st.Rollout, size: f.Spec.Size}
	if f.Draining {
		ro.size = 0
	}
	ro.verdict, ro.why, ro.passed = analysisVerdict(f)
	if s, detail := ro.control(now); s != "" {
		return ro.step(s, detail)
	}
	return ro.progress(now)
}

// rolloutView is what one pass decides a rollout's next step from.
type rolloutView struct {
	f    *state.DesiredFleet
	r    *state.RolloutState
	rs   reconcile.RolloutStatus
	size int
	// The analysis's verdict (see analysisVerdict).
	verdict, why string
	passed       bool
}

func (ro rolloutView) step(s, detail string) *state.RolloutStep {
	return &state.RolloutStep{Step: s, Of: ro.r.Version, Available: ro.rs.Available, Detail: detail}
}

// control is a step that stops or moves the rollout on: a failure (an
// instance of the version, or the analysis), a pause (an inconclusive
// analysis), a canary's promotion, a checkpoint, a blue-green switch.
func (ro rolloutView) control(now time.Time) (step, detail string) {
	f, r, rs := ro.f, ro.r, ro.rs
	verdict, why, passed := ro.verdict, ro.why, ro.passed
	switch {
	case len(rs.Failing) > 0:
		return state.StepFailed, fmt.Sprintf("instance %s of version %d failed its health checks during the rollout", rs.Failing[0], r.Version)
	case verdict == state.StepFailed:
		return state.StepFailed, why
	case verdict != "":
		return state.StepPause, why // inconclusive: a human decides
	case rs.Canary > 0 && rs.Available >= rs.Canary && passed && canaryPromote(f, rs, now):
		return state.StepPromote, fmt.Sprintf("%d canaries available for promote_after %s", rs.Available, f.Spec.Rollout.Canary.PromoteAfter)
	case checkpointReached(f, rs, ro.size):
		return state.StepCheckpoint, fmt.Sprintf("%d of %d instances run it (checkpoint %s)", rs.Available, ro.size, f.Spec.Rollout.Checkpoints[r.Checkpoints])
	case rs.BlueGreen && !r.Switched && rs.Ready >= ro.size && passed:
		return state.StepSwitch, fmt.Sprintf("%d instances of version %d ready for min_ready", rs.Ready, r.Version)
	}
	return "", ""
}

// progress is a step of the rollout's course: no progress within the
// deadline (a failure), progress, completion, stability after the bake.
func (ro rolloutView) progress(now time.Time) *state.RolloutStep {
	f, r, rs := ro.f, ro.r, ro.rs
	passed := ro.passed
	switch {
	case r.CompletedAt.IsZero() && now.Sub(r.LastProgressAt) > f.Spec.Rollout.Deadline():
		return ro.step(state.StepFailed, fmt.Sprintf("no instance of version %d became available for %s (progress_deadline)", r.Version, f.Spec.Rollout.Deadline()))
	case r.CompletedAt.IsZero() && rs.Available >= ro.size && (rs.Outdated == 0 || rs.BlueGreen && r.Switched && rs.OldAdmitted == 0):
		return ro.step(state.StepComplete, "")
	case r.CompletedAt.IsZero() && progressOf(rs) > r.Available:
		s := ro.step(state.StepProgress, "")
		s.Available = progressOf(rs)
		return s
	case !r.CompletedAt.IsZero() && now.Sub(r.CompletedAt) >= f.Spec.Rollout.Bake && rs.Available >= ro.size && passed:
		return ro.step(state.StepStable, "")
	}
	return nil
}
