package reconcile

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/immutd/immutd/internal/cut"
	"github.com/immutd/immutd/internal/instance"
	"github.com/immutd/immutd/internal/state"
	"github.com/immutd/immutd/internal/traffic"
)

// Backends gives the traffic backends of a fleet. The executor asks for
// them at every traffic step; an implementation keeps them open between
// calls and builds new ones when the fleet's traffic spec changes.
type Backends interface {
	For(d *state.DesiredFleet) ([]traffic.Backend, error)
}

// Traffic step timings.
const (
	// trafficCallTimeout bounds one backend call; a step retries calls
	// until its backend_timeout.
	trafficCallTimeout = 30 * time.Second
	trafficRetryMin    = 250 * time.Millisecond
	trafficRetryMax    = 5 * time.Second
	// connPoll is how often a drain asks backends for connections left.
	connPoll = 200 * time.Millisecond
)

// memberOf is the instance of an intent as backends see it.
func memberOf(it *state.Intent, d *state.DesiredFleet, healthy bool) traffic.Member {
	return traffic.Member{Fleet: it.Fleet, InstanceID: it.InstanceID, Address: it.Address, ImageDigest: it.ImageDigest,
		Version: it.Image, Healthy: healthy, Canary: IsCanary(d, it.ImageDigest, "")}
}

// IsCanary says whether an instance of this image digest and launch
// template ("": not known, the digest decides) is a canary of the
// fleet's canary rollout in progress.
func IsCanary(d *state.DesiredFleet, digest, template string) bool {
	t := d.Target()
	return canaries(d) > 0 && digest == t.ImageDigest && (template == "" || template == t.TemplateHash)
}

// backendsOf returns the fleet's backends; an error fails the step.
func (e *Executor) backendsOf(d *state.DesiredFleet) ([]traffic.Backend, error) {
	if !d.Spec.Traffic.Gated() {
		return nil, nil
	}
	if e.backends == nil {
		return nil, errors.New("the fleet has traffic backends but this agent has no traffic support configured")
	}
	return e.backends.For(d)
}

// eachBackend calls fn for every backend until all succeeded or until
// deadline, retrying with backoff. It returns the last errors, one line
// per backend that never succeeded.
func (e *Executor) eachBackend(ctx context.Context, log *zap.Logger, step string, bs []traffic.Backend, deadline time.Time, fn func(context.Context, traffic.Backend) error) error {
	pending := append([]traffic.Backend(nil), bs...)
	wait := trafficRetryMin
	for attempt := 1; ; attempt++ {
		var failed []traffic.Backend
		var msgs []string
		permanent := false // the same call fails the same way again
		for _, b := range pending {
			cctx, cancel := context.WithTimeout(ctx, min(trafficCallTimeout, max(deadline.Sub(e.now()), time.Second)))
			err := fn(cctx, b)
			cancel()
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if err != nil {
				permanent = permanent || errors.Is(err, instance.ErrPermanent)
				failed = append(failed, b)
				msgs = append(msgs, b.Name()+": "+err.Error())
				log.Warn("traffic backend call failed", zap.String("step", step), zap.String("backend", b.Name()), zap.Int("attempt", attempt),
					zap.Bool("unreachable", errors.Is(err, traffic.ErrUnreachable)), zap.Error(err))
			}
		}
		if len(failed) == 0 {
			return nil
		}
		if permanent {
			return fmt.Errorf("%s refused by a traffic backend: %s", step, clip(strings.Join(msgs, "; "), 1024))
		}
		if !e.now().Add(wait).Before(deadline) {
			return fmt.Errorf("%s not confirmed by every traffic backend within backend_timeout: %s", step, clip(strings.Join(msgs, "; "), 1024))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
		wait = min(2*wait, trafficRetryMax)
		pending = failed
	}
}

// clip bounds an error text kept in raft and events.
func clip(s string, n int) string { return cut.To(s, n, "…") }

// admit puts an instance into every backend of its fleet. The instance
// is admitted (state) only once all of them confirmed it.
func (e *Executor) admit(ctx context.Context, log *zap.Logger, it *state.Intent, d *state.DesiredFleet, start time.Time) {
	bs, err := e.backendsOf(d)
	if err != nil {
		e.complete(ctx, log, it, state.Failed, err.Error(), nil, start)
		return
	}
	m := memberOf(it, d, true)
	err = e.eachBackend(ctx, log, "admit", bs, e.now().Add(d.Spec.Traffic.BackendTimeout), func(ctx context.Context, b traffic.Backend) error {
		return b.Admit(ctx, m)
	})
	if ctx.Err() != nil {
		return
	}
	if err != nil {
		// Not admitted means in no backend: take it out of those that did
		// confirm it (no new traffic; what they sent it may finish).
		for _, b := range bs {
			cctx, cancel := context.WithTimeout(ctx, trafficCallTimeout)
			if derr := b.Drain(cctx, m); derr != nil {
				log.Warn("could not take a refused admission back", zap.String("backend", b.Name()), zap.Error(derr))
			}
			cancel()
		}
		e.complete(ctx, log, it, state.Failed, err.Error(), nil, start)
		return
	}
	e.complete(ctx, log, it, state.Done, "", nil, start)
}

// drain takes an admitted instance out of every backend: no new traffic
// (confirmed, and journaled as DrainRemoved), then the wait for its
// connections to end or drain_delay from the journaled time, whichever
// comes first, then removal. A later leader re-driving it skips nothing
// and repeats no wait: each step is idempotent and the delay runs from
// the time in raft.
func (e *Executor) drain(ctx context.Context, log *zap.Logger, it *state.Intent, d *state.DesiredFleet, start time.Time) {
	bs, err := e.backendsOf(d)
	if err != nil {
		e.complete(ctx, log, it, state.Failed, err.Error(), nil, start)
		return
	}
	tr := d.Spec.Traffic
	m := memberOf(it, d, false)
	if it.RemovedAt.IsZero() {
		err := e.eachBackend(ctx, log, "drain", bs, e.now().Add(tr.BackendTimeout), func(ctx context.Context, b traffic.Backend) error {
			return b.Drain(ctx, m)
		})
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			e.complete(ctx, log, it, state.Failed, err.Error(), nil, start)
			return
		}
		at := e.now()
		res, err := e.journal.Apply(ctx, &state.DrainRemoved{OpID: it.OpID, Term: it.Term, At: at, Node: e.node})
		if err == nil {
			err = res.Error()
		}
		if err != nil {
			if ctx.Err() == nil {
				log.Warn("could not record the drain step; the next leader repeats it", zap.Error(err))
			}
			return
		}
		it.RemovedAt = at
	}
	// An instance that already ended has no connections worth waiting for.
	if it.Reason != state.ReasonExited && it.Reason != string(ReasonGone) {
		e.awaitConnections(ctx, log, bs, m, it.RemovedAt.Add(tr.DrainDelay))
		if ctx.Err() != nil {
			return
		}
	}
	err = e.eachBackend(ctx, log, "remove", bs, e.now().Add(tr.BackendTimeout), func(ctx context.Context, b traffic.Backend) error {
		return b.Remove(ctx, m)
	})
	e.finish(ctx, log, it, err, start)
}

// awaitConnections waits until every backend reports no connections to m
// (a backend that cannot count them keeps the wait going) or until.
func (e *Executor) awaitConnections(ctx context.Context, log *zap.Logger, bs []traffic.Backend, m traffic.Member, until time.Time) {
	for {
		now := e.now()
		if !now.Before(until) {
			log.Info("drain delay over", zap.Time("until", until))
			return
		}
		done, left := true, 0
		for _, b := range bs {
			cctx, cancel := context.WithTimeout(ctx, min(trafficCallTimeout, until.Sub(now)))
			n, known, err := b.Connections(cctx, m)
			cancel()
			if err != nil || !known || n > 0 {
				done = false
				left += n
			}
		}
		if done {
			return
		}
		e.noteConnections(m, left)
		select {
		case <-ctx.Done():
			return
		case <-time.After(min(connPoll, until.Sub(now))):
		}
	}
}

// noteConnections reports the connections a draining instance still has.
func (e *Executor) noteConnections(m traffic.Member, n int) {
	if e.onConnections != nil {
		e.onConnections(m.Fleet, m.InstanceID, n)
	}
}

// unroute makes sure an instance that is about to be terminated gets no
// traffic from any backend, without a wait: it was never admitted, or a
// drain came before. An unreachable backend blocks the terminate.
func (e *Executor) unroute(ctx context.Context, log *zap.Logger, it *state.Intent, d *state.DesiredFleet) error {
	bs, err := e.backendsOf(d)
	if err != nil || len(bs) == 0 {
		return err
	}
	m := memberOf(it, d, false)
	return e.eachBackend(ctx, log, "unroute", bs, e.now().Add(d.Spec.Traffic.BackendTimeout), func(ctx context.Context, b traffic.Backend) error {
		if err := b.Drain(ctx, m); err != nil {
			return err
		}
		return b.Remove(ctx, m)
	})
}
