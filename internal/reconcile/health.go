package reconcile

import (
	"fmt"
	"time"

	"github.com/immutd/immutd/internal/state"
)

// What the planner makes of an instance's verdict history beyond the
// verdict itself:
//
//   - flapping: it turned from healthy to unhealthy remediation.flap_threshold
//     times within flap_window: it is judged unhealthy even while it
//     passes, so that it is replaced (within the kill rates) instead of
//     failing again;
//   - recovering: it is healthy again after failing, for less than
//     remediation.healthy_delay: it counts as starting (not available, not
//     admitted, not killed);
//   - settling: it has been unhealthy for less than the fleet's settle
//     window (the longest interval × unhealthy_threshold of its checks):
//     its kill waits, so that instances failing together are seen failing
//     together and recognised as a storm, not killed one by one.

// judged is an instance's verdict as the planner uses it.
type judged struct {
	Health     Health
	Evidence   []string
	Flapping   bool
	Recovering bool
}

// judgeHistory applies flap detection and healthy_delay to a verdict.
func judgeHistory(in *Inst, r *state.RemediationSpec, now time.Time) judged {
	h := judged{Health: in.Health, Evidence: in.Evidence}
	threshold, window := *r.FlapThreshold, *r.FlapWindow
	if n := failuresSince(in.Failures, now.Add(-window)); threshold > 0 && n >= threshold && (in.Health == Healthy || in.Health == Unhealthy) {
		h.Flapping = true
		note := fmt.Sprintf("flapping: failed %d times in the last %s (flap_threshold %d)", n, window, threshold)
		if in.Health == Healthy {
			h.Health, h.Evidence = Unhealthy, []string{note}
		} else {
			h.Evidence = append([]string{note}, in.Evidence...)
		}
		return h
	}
	if in.Health == Healthy && len(in.Failures) > 0 && r.HealthyDelay > 0 && !in.HealthySince.IsZero() && now.Sub(in.HealthySince) < r.HealthyDelay {
		h.Health, h.Recovering = Starting, true
	}
	return h
}

func failuresSince(ts []time.Time, from time.Time) int {
	n := 0
	for _, t := range ts {
		if t.After(from) {
			n++
		}
	}
	return n
}

// settleWindow is how long an instance must have been unhealthy before
// it is killed for it: the longest a check of the fleet takes to judge an
// instance unhealthy, so that every instance that failed at the same
// moment is judged by then.
func settleWindow(spec *state.FleetSpec) time.Duration {
	var w time.Duration
	for _, c := range spec.Health.Checks {
		w = max(w, c.Interval*time.Duration(max(c.UnhealthyThreshold, 1)))
	}
	return w
}

// settling says whether an unhealthy instance's kill still waits for the
// settle window; the time is when it ends.
func settling(in *Inst, spec *state.FleetSpec, now time.Time) (bool, time.Time) {
	if in.UnhealthySince.IsZero() {
		return false, time.Time{} // not followed by the leader (or flapping): settled
	}
	until := in.UnhealthySince.Add(settleWindow(spec))
	return now.Before(until), until
}
