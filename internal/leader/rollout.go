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
	size := f.Spec.Size
	if f.Draining {
		size = 0
	}
	rs := st.Rollout
	step := func(s, detail string) *state.RolloutStep {
		return &state.RolloutStep{Step: s, Of: r.Version, Available: rs.Available, Detail: detail}
	}
	verdict, why, passed := analysisVerdict(f)
	switch {
	case len(rs.Failing) > 0:
		return step(state.StepFailed, fmt.Sprintf("instance %s of version %d failed its health checks during the rollout", rs.Failing[0], r.Version))
	case verdict == state.StepFailed:
		return step(state.StepFailed, why)
	case verdict != "":
		return step(state.StepPause, why) // inconclusive: a human decides
	case rs.Canary > 0 && rs.Available >= rs.Canary && passed && canaryPromote(f, rs, now):
		return step(state.StepPromote, fmt.Sprintf("%d canaries available for promote_after %s", rs.Available, f.Spec.Rollout.Canary.PromoteAfter))
	case checkpointReached(f, rs, size):
		cp := f.Spec.Rollout.Checkpoints[r.Checkpoints]
		return step(state.StepCheckpoint, fmt.Sprintf("%d of %d instances run it (checkpoint %s)", rs.Available, size, cp))
	case rs.BlueGreen && !r.Switched && rs.Ready >= size && passed:
		return step(state.StepSwitch, fmt.Sprintf("%d instances of version %d ready for min_ready", rs.Ready, r.Version))
	case r.CompletedAt.IsZero() && now.Sub(r.LastProgressAt) > f.Spec.Rollout.Deadline():
		return step(state.StepFailed, fmt.Sprintf("no instance of version %d became available for %s (progress_deadline)", r.Version, f.Spec.Rollout.Deadline()))
	case r.CompletedAt.IsZero() && rs.Available >= size && (rs.Outdated == 0 || rs.BlueGreen && r.Switched && rs.OldAdmitted == 0):
		return step(state.StepComplete, "")
	case r.CompletedAt.IsZero() && progressOf(rs) > r.Available:
		s := step(state.StepProgress, "")
		s.Available = progressOf(rs)
		return s
	case !r.CompletedAt.IsZero() && now.Sub(r.CompletedAt) >= f.Spec.Rollout.Bake && rs.Available >= size && passed:
		return step(state.StepStable, "")
	}
	return nil
}
