package agent

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"
	"unicode"

	"go.uber.org/zap"

	"github.com/immutd/immutd/internal/api"
	"github.com/immutd/immutd/internal/leader"
	"github.com/immutd/immutd/internal/reconcile"
	"github.com/immutd/immutd/internal/state"
)

// Bounds of the guards' requests.
const (
	maxPauseFor   = 30 * 24 * time.Hour
	maxPauseID    = 32
	maxInstanceID = 256
)

// planRequest names the fleet a dry run is for ("" for every fleet).
type planRequest struct {
	Fleet string `json:"fleet,omitempty"`
}

// Plan implements api.Backend: the leader's dry run.
func (a *Agent) Plan(ctx context.Context, fleet string) (api.Plan, error) {
	if fleet != "" {
		if err := checkFleetName(fleet); err != nil {
			return api.Plan{}, fmt.Errorf("%v: %w", err, api.ErrBadRequest)
		}
	}
	var p api.Plan
	err := a.onLeader(ctx, http.MethodPost, "/cluster/v1/plan", planRequest{Fleet: fleet}, &p, func() error {
		var err error
		p, err = a.planHere(fleet)
		return err
	})
	return p, err
}

// planHere runs the dry run on the leader.
func (a *Agent) planHere(fleet string) (api.Plan, error) {
	t := a.currentTerm()
	if t == nil {
		return api.Plan{}, fmt.Errorf("%w: %w", leader.ErrNotReady, api.ErrUnavailable)
	}
	planned, ok := t.DryRun(time.Now())
	if !ok {
		return api.Plan{}, fmt.Errorf("the leader has not finished its first reconcile pass yet: %w", api.ErrUnavailable)
	}
	p := api.Plan{At: planned.At, Observed: planned.Observed, Leader: a.cfg.NodeName, Storm: planned.Result.Storm,
		Actions: []reconcile.Action{}, Held: []reconcile.Held{}, Blocked: map[string][]api.Block{}, Pauses: []state.Pause{}}
	known := fleet == ""
	for _, st := range planned.Result.Fleets {
		if fleet != "" && st.Fleet != fleet {
			continue
		}
		known = true
		bs := []api.Block{}
		for _, b := range st.Blocked {
			bs = append(bs, api.Block{Cause: string(b.Cause), Detail: b.Detail})
		}
		p.Blocked[st.Fleet] = bs
	}
	if !known {
		return api.Plan{}, fmt.Errorf("fleet %q is not known: %w", fleet, api.ErrNotFound)
	}
	for _, act := range planned.Result.Actions {
		if fleet == "" || act.Fleet == fleet {
			p.Actions = append(p.Actions, act)
		}
	}
	for _, h := range planned.Result.Held {
		if fleet == "" || h.Fleet == fleet {
			p.Held = append(p.Held, h)
		}
	}
	a.node.Read(func(st *state.State) {
		for _, ps := range st.Pauses {
			if ps.Holds(fleet, planned.At) || fleet == "" && ps.Holds(ps.Fleet, planned.At) {
				p.Pauses = append(p.Pauses, ps)
			}
		}
	})
	return p, nil
}

// Explain implements api.Backend: why an instance was killed, or why it
// has not been, from the leader's dry run and status and the event log.
func (a *Agent) Explain(ctx context.Context, id string) (api.Explanation, error) {
	if id == "" || len(id) > maxInstanceID || !printable(id) || strings.ContainsRune(id, ' ') {
		return api.Explanation{}, fmt.Errorf("%.80q is not an instance id: %w", id, api.ErrBadRequest)
	}
	ex := api.Explanation{ID: id, Planned: []reconcile.Action{}, Held: []reconcile.Held{}, Events: []state.Event{}}
	a.node.Read(func(st *state.State) {
		for _, e := range st.EventsSince(0, 0) {
			if e.InstanceID == id {
				ex.Events = append(ex.Events, e)
				ex.Fleet = e.Fleet
			}
		}
	})
	status, err := a.ConsistentStatus(ctx)
	if err != nil {
		return ex, fmt.Errorf("the leader's status: %v: %w", err, api.ErrUnavailable)
	}
	for _, f := range status.Fleets {
		for i := range f.Instances {
			if f.Instances[i].ID == id {
				in := f.Instances[i]
				ex.Instance, ex.Fleet = &in, f.Name
			}
		}
	}
	if ex.Instance == nil && len(ex.Events) == 0 {
		return ex, fmt.Errorf("no instance %q is known, and no event names it (the event log keeps the last %d events): %w", id, state.MaxEvents, api.ErrNotFound)
	}
	plan, err := a.Plan(ctx, "")
	if err != nil {
		return ex, fmt.Errorf("the leader's plan: %w", err)
	}
	for _, act := range plan.Actions {
		if act.InstanceID == id {
			ex.Planned = append(ex.Planned, act)
		}
	}
	for _, h := range plan.Held {
		if h.InstanceID == id {
			ex.Held = append(ex.Held, h)
		}
	}
	ex.Verdict = verdictOf(&ex)
	return ex, nil
}

// verdictOf sums an explanation up in a sentence.
func verdictOf(ex *api.Explanation) string {
	if len(ex.Planned) > 0 {
		a := ex.Planned[0]
		return fmt.Sprintf("the next pass would %s it (%s): %s", a.Kind, a.Reason, strings.Join(a.Evidence, "; "))
	}
	if len(ex.Held) > 0 {
		h := ex.Held[0]
		s := fmt.Sprintf("it would be %s for %s (%s), but %s holds it back", pastOf(h.Kind), h.Reason, strings.Join(h.Evidence, "; "), h.Guard)
		if h.Detail != "" {
			s += ": " + h.Detail
		}
		return s
	}
	if in := ex.Instance; in != nil {
		if in.Intent != "" {
			return fmt.Sprintf("%s is in flight on it (state %s)", in.Intent, in.State)
		}
		return fmt.Sprintf("it is kept: state %s, up to date %t, and nothing in the plan is about it", in.State, in.UpToDate)
	}
	// Gone: the events say how.
	for _, e := range slices.Backward(ex.Events) {
		switch e.Action {
		case state.ActionTerminatePlanned, state.ActionDrainPlanned:
			return fmt.Sprintf("it was %s at %s for %s: %s", pastOf(reconcile.Kind(strings.TrimSuffix(string(e.Action), "_planned"))), e.Time.UTC().Format(time.RFC3339), e.Reason, strings.Join(e.Evidence, "; "))
		}
	}
	return "it is gone; the events below are all that is known"
}

func pastOf(k reconcile.Kind) string {
	switch k {
	case reconcile.ActTerminate:
		return "terminated"
	case reconcile.ActDrain:
		return "drained"
	case reconcile.ActLaunch:
		return "launched"
	case reconcile.ActAdmit:
		return "admitted"
	}
	return string(k) + "ed"
}

// Pause implements api.Backend.
func (a *Agent) Pause(ctx context.Context, req api.PauseRequest) ([]string, error) {
	req.Reason, req.By = strings.TrimSpace(req.Reason), strings.TrimSpace(req.By)
	switch {
	case req.Fleet != "" && checkFleetName(req.Fleet) != nil:
		return nil, fmt.Errorf("%v: %w", checkFleetName(req.Fleet), api.ErrBadRequest)
	case req.Reason == "" || len(req.Reason) > state.MaxPauseReason || !printable(req.Reason):
		return nil, fmt.Errorf("a pause needs a reason of 1 to %d printable bytes: %w", state.MaxPauseReason, api.ErrBadRequest)
	case len(req.By) > maxNodeNameLen || !printable(req.By):
		return nil, fmt.Errorf("by must be at most %d printable bytes: %w", maxNodeNameLen, api.ErrBadRequest)
	case req.For < 0 || req.For > maxPauseFor:
		return nil, fmt.Errorf("for must be from 0 (no expiry) to %s, got %s: %w", maxPauseFor, req.For, api.ErrBadRequest)
	}
	var ids []string
	err := a.onLeader(ctx, http.MethodPost, "/cluster/v1/pause", req, &ids, func() error {
		res, err := a.node.Apply(ctx, &state.AddPause{Fleet: req.Fleet, Reason: req.Reason, For: req.For, By: req.By, At: time.Now(), Node: a.cfg.NodeName})
		if err != nil {
			return err
		}
		if err := res.Error(); err != nil {
			return conflict(err)
		}
		ids = res.Accepted
		a.log.Warn("paused", zap.String("fleet", req.Fleet), zap.String("reason", req.Reason), zap.Strings("pause", ids))
		a.Wake()
		return nil
	})
	return ids, err
}

// Unpause implements api.Backend.
func (a *Agent) Unpause(ctx context.Context, req api.UnpauseRequest) ([]string, error) {
	switch {
	case req.Fleet != "" && checkFleetName(req.Fleet) != nil:
		return nil, fmt.Errorf("%v: %w", checkFleetName(req.Fleet), api.ErrBadRequest)
	case req.All == (req.ID != ""):
		return nil, fmt.Errorf("name one pause by its id, or ask for all: %w", api.ErrBadRequest)
	case len(req.ID) > maxPauseID || !printable(req.ID) || len(req.By) > maxNodeNameLen || !printable(req.By):
		return nil, fmt.Errorf("pause id or by is too long or not printable: %w", api.ErrBadRequest)
	}
	var ids []string
	err := a.onLeader(ctx, http.MethodPost, "/cluster/v1/unpause", req, &ids, func() error {
		res, err := a.node.Apply(ctx, &state.Unpause{ID: req.ID, All: req.All, Fleet: req.Fleet, By: req.By, At: time.Now(), Node: a.cfg.NodeName})
		if err != nil {
			return err
		}
		if err := res.Error(); err != nil {
			return conflict(err)
		}
		ids = res.Accepted
		a.log.Info("unpaused", zap.Strings("pause", ids))
		a.Wake()
		return nil
	})
	return ids, err
}

func printable(s string) bool {
	return strings.IndexFunc(s, func(r rune) bool { return !unicode.IsPrint(r) }) < 0
}

// Rollouts implements api.Backend, from the replicated state.
func (a *Agent) Rollouts(ctx context.Context, fleet string) ([]api.Rollout, error) {
	if fleet != "" && checkFleetName(fleet) != nil {
		return nil, fmt.Errorf("%v: %w", checkFleetName(fleet), api.ErrBadRequest)
	}
	out := []api.Rollout{}
	a.node.Read(func(st *state.State) {
		for _, n := range st.FleetNames() {
			if fleet == "" || n == fleet {
				out = append(out, api.RolloutOf(st.Fleets[n]))
			}
		}
	})
	if fleet != "" && len(out) == 0 {
		return nil, fmt.Errorf("fleet %q is not known: %w", fleet, api.ErrNotFound)
	}
	return out, nil
}

// rolloutRequest is a RolloutStep forwarded to the leader.
type rolloutRequest struct {
	Fleet string             `json:"fleet"`
	Req   api.RolloutRequest `json:"req"`
}

// RolloutStep implements api.Backend: an operator's pause, resume, abort
// or revert, journaled by the leader.
func (a *Agent) RolloutStep(ctx context.Context, fleet string, req api.RolloutRequest) error {
	req.Reason, req.By = strings.TrimSpace(req.Reason), strings.TrimSpace(req.By)
	switch {
	case checkFleetName(fleet) != nil:
		return fmt.Errorf("%v: %w", checkFleetName(fleet), api.ErrBadRequest)
	case !slices.Contains([]string{state.StepPause, state.StepResume, state.StepAbort, state.StepRevert, state.StepPromote, state.StepConfirm}, req.Step):
		return fmt.Errorf("step %.40q is not pause, resume, promote, abort, revert or confirm: %w", req.Step, api.ErrBadRequest)
	case req.To < 0 || req.To > 1<<30 || req.To != 0 && req.Step != state.StepRevert:
		return fmt.Errorf("only a revert names a version, and a version is a positive number: %w", api.ErrBadRequest)
	case len(req.Reason) > state.MaxPauseReason || !printable(req.Reason) || len(req.By) > maxNodeNameLen || !printable(req.By):
		return fmt.Errorf("reason or by is too long or not printable: %w", api.ErrBadRequest)
	}
	return a.onLeader(ctx, http.MethodPost, "/cluster/v1/rollout", rolloutRequest{Fleet: fleet, Req: req}, nil, func() error {
		res, err := a.node.Apply(ctx, &state.RolloutStep{Fleet: fleet, Step: req.Step, To: req.To, Detail: req.Reason, By: req.By, At: time.Now(), Node: a.cfg.NodeName})
		if err != nil {
			return err
		}
		if err := res.Error(); err != nil {
			return conflict(err)
		}
		a.log.Warn("rollout "+req.Step, zap.String("fleet", fleet), zap.Int("to", req.To), zap.String("reason", req.Reason))
		a.Wake()
		return nil
	})
}
