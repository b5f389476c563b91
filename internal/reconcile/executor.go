package reconcile

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/immutd/immutd/internal/instance"
	"github.com/immutd/immutd/internal/state"
)

// Provider is what the executor needs from a driver. Launch must be
// idempotent by instance id; Terminate of a missing instance is success.
type Provider interface {
	List(ctx context.Context) ([]instance.Observed, error)
	Launch(ctx context.Context, req instance.LaunchRequest) (instance.Observed, error)
	Terminate(ctx context.Context, id string, grace time.Duration) error
}

// Journal is the replicated log the executor writes intents to.
type Journal interface {
	Apply(ctx context.Context, c state.Command) (state.Result, error)
	Term() uint64
	VerifyLeader() error
}

// Observer receives the outcome of every finished provider call.
type Observer interface {
	Finished(it *state.Intent, outcome state.Outcome, took time.Duration)
}

// Executor turns plans into journaled provider calls. One Executor lives
// for one leadership term: its context is cancelled when leadership is
// lost, which stops every call it drives.
type Executor struct {
	journal   Journal
	providers map[string]Provider
	node      string
	log       *zap.Logger
	observer  Observer
	// wake asks for a new reconcile pass.
	wake func()
	now  func() time.Time

	// Retry policy for provider calls.
	attempts int
	backoff  time.Duration

	// backends are the traffic backends of gated fleets; onConnections
	// hears how many connections a draining instance still has.
	backends      Backends
	onConnections func(fleet, instanceID string, n int)

	mu       sync.Mutex
	inflight map[string]bool
	wg       sync.WaitGroup
}

// ExecutorOptions configures an Executor.
type ExecutorOptions struct {
	Journal   Journal
	Providers map[string]Provider
	Node      string
	Logger    *zap.Logger
	Observer  Observer
	Wake      func()
	Now       func() time.Time
	// Attempts is how often a provider call is tried before the intent
	// fails (default 3); Backoff is the first wait between tries, doubled
	// each time (default 200ms).
	Attempts int
	Backoff  time.Duration
	// Backends are the traffic backends of fleets with a traffic gate.
	Backends Backends
	// OnConnections, if set, hears the connections a draining instance
	// still has, each time the drain asks.
	OnConnections func(fleet, instanceID string, n int)
}

// NewExecutor returns an executor.
func NewExecutor(o ExecutorOptions) *Executor {
	e := &Executor{journal: o.Journal, providers: o.Providers, node: o.Node, log: o.Logger, observer: o.Observer,
		wake: o.Wake, now: o.Now, attempts: o.Attempts, backoff: o.Backoff, inflight: map[string]bool{},
		backends: o.Backends, onConnections: o.OnConnections}
	if e.log == nil {
		e.log = zap.NewNop()
	}
	if e.wake == nil {
		e.wake = func() {}
	}
	if e.now == nil {
		e.now = time.Now
	}
	if e.attempts <= 0 {
		e.attempts = 3
	}
	if e.backoff <= 0 {
		e.backoff = 200 * time.Millisecond
	}
	return e
}

// Driving reports whether this executor is driving the intent.
func (e *Executor) Driving(opID string) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.inflight[opID]
}

// Wait blocks until every provider call this executor started returned.
func (e *Executor) Wait() { e.wg.Wait() }

// NewID returns a fresh random id for an instance of fleet.
func NewID(fleet string) string { return fleet + "-" + randHex(5) }

func randHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(fmt.Sprintf("reconcile: crypto/rand: %v", err))
	}
	return hex.EncodeToString(b)
}

// Apply journals the plan's launches and terminations as one batch of
// intents (rejected as a whole if the desired generation moved since the
// plan was made), records adoptions, and starts driving every accepted
// intent. It returns the intents it started. records are the instance
// records the plan was made on (traffic steps take the instance's image
// from them).
func (e *Executor) Apply(ctx context.Context, generation uint64, plan Result, fleets map[string]*state.DesiredFleet, observed map[string]instance.Observed, records map[string]*state.Instance) ([]*state.Intent, error) {
	now := e.now()
	var adopt []*state.Instance
	var quarantine []state.QuarantineEntry
	var intents []*state.Intent
	term := e.journal.Term()
	for _, a := range plan.Actions {
		d := fleets[a.Fleet]
		switch a.Kind {
		case ActAdopt:
			o, ok := observed[a.InstanceID]
			if !ok {
				continue
			}
			rec := state.RecordOf(o)
			adopt = append(adopt, &rec)
		case ActQuarantine:
			quarantine = append(quarantine, state.QuarantineEntry{Fleet: a.Fleet, InstanceID: a.InstanceID, Reason: string(a.Reason), Evidence: a.Evidence})
		case ActLaunch:
			t := d.Target()
			intents = append(intents, &state.Intent{OpID: randHex(8), Kind: state.Launch, Fleet: a.Fleet, InstanceID: NewID(a.Fleet),
				Reason: string(a.Reason), Evidence: a.Evidence, Term: term, Generation: d.Generation, Node: e.node,
				ImageDigest: t.ImageDigest, TemplateHash: t.TemplateHash, Image: t.Image})
		case ActTerminate, ActAdmit, ActDrain:
			kind := map[Kind]state.IntentKind{ActTerminate: state.Terminate, ActAdmit: state.Admit, ActDrain: state.Drain}[a.Kind]
			it := &state.Intent{OpID: randHex(8), Kind: kind, Fleet: a.Fleet, InstanceID: a.InstanceID,
				Reason: string(a.Reason), Evidence: a.Evidence, Term: term, Generation: d.Generation, Node: e.node}
			if kind == state.Terminate {
				it.Grace = d.Spec.Launch.StopGrace
				// Where its output stays once it is gone: the kill's
				// record links to it.
				if _, keeps := e.providers[d.Spec.Provider].(interface {
					Logs(ctx context.Context, id string, max int64) ([]byte, error)
				}); keeps {
					it.Evidence = append(slices.Clone(it.Evidence), "its last output is kept: immutd logs "+a.InstanceID)
				}
			}
			if d.Spec.Traffic.Gated() {
				if r, ok := records[a.InstanceID]; ok {
					it.Address, it.ImageDigest, it.Image = r.Address, r.ImageDigest, r.Image
				}
				if o, ok := observed[a.InstanceID]; ok {
					it.Address, it.ImageDigest = o.Address, o.ImageDigest
				}
			}
			intents = append(intents, it)
		}
	}
	if len(adopt) > 0 {
		if _, err := e.journal.Apply(ctx, &state.Adopt{Instances: adopt, At: now, Node: e.node}); err != nil {
			return nil, fmt.Errorf("reconcile: record adoptions: %w", err)
		}
	}
	if len(quarantine) > 0 {
		// A record change, no provider call: the instance keeps running.
		res, err := e.journal.Apply(ctx, &state.Quarantine{Entries: quarantine, At: now, Node: e.node})
		if err != nil {
			return nil, fmt.Errorf("reconcile: record quarantines: %w", err)
		}
		for id, why := range res.Rejected {
			e.log.Warn("quarantine refused", zap.String("instance_id", id), zap.String("reason", why))
		}
		for _, id := range res.Accepted {
			e.log.Warn("instance quarantined", zap.String("instance_id", id))
		}
	}
	if len(intents) == 0 {
		return nil, nil
	}
	res, err := e.journal.Apply(ctx, &state.CommitIntents{Generation: generation, Intents: intents, At: now})
	if err != nil {
		return nil, fmt.Errorf("reconcile: journal intents: %w", err)
	}
	if err := res.Error(); err != nil {
		return nil, fmt.Errorf("reconcile: journal intents: %w", err)
	}
	for op, why := range res.Rejected {
		e.log.Warn("intent rejected", zap.String("op_id", op), zap.String("reason", why))
	}
	accepted := map[string]bool{}
	for _, id := range res.Accepted {
		accepted[id] = true
	}
	var started []*state.Intent
	for _, it := range intents {
		if accepted[it.OpID] {
			it.CreatedAt = now
			e.Drive(ctx, it, fleets[it.Fleet])
			started = append(started, it)
		}
	}
	return started, nil
}

// Drive starts driving an open intent in the background, unless it is
// already being driven. d is the fleet's current desired state.
func (e *Executor) Drive(ctx context.Context, it *state.Intent, d *state.DesiredFleet) {
	e.mu.Lock()
	if e.inflight[it.OpID] {
		e.mu.Unlock()
		return
	}
	e.inflight[it.OpID] = true
	e.mu.Unlock()
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		defer func() {
			e.mu.Lock()
			delete(e.inflight, it.OpID)
			e.mu.Unlock()
			e.wake()
		}()
		e.drive(ctx, it, d)
	}()
}

func (e *Executor) drive(ctx context.Context, it *state.Intent, d *state.DesiredFleet) {
	log := e.log.With(zap.String("fleet", it.Fleet), zap.String("instance_id", it.InstanceID), zap.String("op_id", it.OpID), zap.String("reason", it.Reason))
	start := e.now()
	p := e.providers[d.Spec.Provider]
	if p == nil {
		e.complete(ctx, log, it, state.Failed, fmt.Sprintf("provider %q is not configured on this agent", d.Spec.Provider), nil, start)
		return
	}
	switch it.Kind {
	case state.Launch:
		// The launch settings of the version the intent was decided for (a
		// revert launches an older one).
		req := instance.LaunchRequest{InstanceID: it.InstanceID, Fleet: it.Fleet, ImageDigest: it.ImageDigest, TemplateHash: it.TemplateHash, Launch: d.LaunchFor(it.TemplateHash)}
		var obs instance.Observed
		err := e.retry(ctx, log, "launch", func(ctx context.Context) error {
			var err error
			obs, err = p.Launch(ctx, req)
			return err
		})
		if ctx.Err() != nil {
			return // leadership lost: the next leader re-drives the intent
		}
		if err != nil {
			// Leave nothing half-made behind; a failed cleanup shows up as
			// an orphan later.
			if terr := p.Terminate(ctx, it.InstanceID, d.Spec.Launch.StopGrace); terr != nil {
				log.Warn("cleanup after failed launch failed", zap.Error(terr))
			}
			e.complete(ctx, log, it, state.Failed, err.Error(), nil, start)
			return
		}
		e.complete(ctx, log, it, state.Done, "", &obs, start)
	case state.Admit:
		e.admit(ctx, log, it, d, start)
	case state.Drain:
		e.drain(ctx, log, it, d, start)
	case state.Terminate:
		// Nothing is terminated while a backend may still send it traffic.
		if err := e.unroute(ctx, log, it, d); err != nil {
			if ctx.Err() == nil {
				e.complete(ctx, log, it, state.Failed, "not terminated: "+err.Error(), nil, start)
			}
			return
		}
		// Fence a deposed leader: only kill while a quorum agrees we lead.
		if err := e.journal.VerifyLeader(); err != nil {
			log.Warn("not terminating: leadership not confirmed", zap.Error(err))
			return
		}
		err := e.retry(ctx, log, "terminate", func(ctx context.Context) error {
			return p.Terminate(ctx, it.InstanceID, it.Grace)
		})
		e.finish(ctx, log, it, err, start)
	}
}

// finish records the outcome of a step that ended with err, unless
// leadership was lost meanwhile (the next leader finishes the intent).
func (e *Executor) finish(ctx context.Context, log *zap.Logger, it *state.Intent, err error, start time.Time) {
	switch {
	case ctx.Err() != nil:
	case err != nil:
		e.complete(ctx, log, it, state.Failed, err.Error(), nil, start)
	default:
		e.complete(ctx, log, it, state.Done, "", nil, start)
	}
}

// retry makes a provider call up to e.attempts times, waiting between
// tries; an error the provider marked permanent (instance.ErrPermanent)
// is not retried.
func (e *Executor) retry(ctx context.Context, log *zap.Logger, what string, call func(context.Context) error) error {
	wait := e.backoff
	var err error
	for i := 0; i < e.attempts; i++ {
		if err = call(ctx); err == nil || ctx.Err() != nil {
			return err
		}
		permanent := errors.Is(err, instance.ErrPermanent)
		log.Warn("provider call failed", zap.String("call", what), zap.Int("attempt", i+1), zap.Bool("permanent", permanent), zap.Error(err))
		if permanent {
			return err
		}
		if i+1 < e.attempts {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(wait):
			}
			wait *= 2
		}
	}
	return err
}

func (e *Executor) complete(ctx context.Context, log *zap.Logger, it *state.Intent, outcome state.Outcome, msg string, obs *instance.Observed, start time.Time) {
	res, err := e.journal.Apply(ctx, &state.CompleteIntent{OpID: it.OpID, Term: it.Term, Outcome: outcome, Error: msg, Observed: obs, At: e.now(), Node: e.node})
	if err == nil {
		err = res.Error()
	}
	took := e.now().Sub(start)
	if err != nil {
		if !errors.Is(err, context.Canceled) {
			log.Warn("could not record intent outcome; the next leader finishes it", zap.String("outcome", string(outcome)), zap.Error(err))
		}
		return
	}
	fields := []zap.Field{zap.String("outcome", string(outcome)), zap.Float64("duration_seconds", took.Seconds())}
	if msg != "" {
		fields = append(fields, zap.String("error", msg))
	}
	if outcome == state.Done {
		log.Info(string(it.Kind)+" done", fields...)
	} else {
		log.Warn(string(it.Kind)+" "+string(outcome), fields...)
	}
	if e.observer != nil {
		e.observer.Finished(it, outcome, took)
	}
}

// Resume takes over open intents left by an earlier leader (or an earlier
// run of this agent): it claims them for the current term, then finishes
// each one idempotently. A launch whose instance already exists is
// completed; a launch decided for a desired generation that is no longer
// current is abandoned; everything else is driven again.
// It returns how many intents it took over.
func (e *Executor) Resume(ctx context.Context, open []*state.Intent, fleets map[string]*state.DesiredFleet, observed map[string]instance.Observed) (int, error) {
	var ids []string
	for _, it := range open {
		if !e.Driving(it.OpID) {
			ids = append(ids, it.OpID)
		}
	}
	if len(ids) == 0 {
		return 0, nil
	}
	term := e.journal.Term()
	res, err := e.journal.Apply(ctx, &state.ClaimIntents{OpIDs: ids, Term: term, At: e.now(), Node: e.node})
	if err != nil {
		return 0, fmt.Errorf("reconcile: claim intents: %w", err)
	}
	claimed := map[string]bool{}
	for _, id := range res.Accepted {
		claimed[id] = true
	}
	for _, it := range open {
		if !claimed[it.OpID] {
			continue
		}
		cp := *it
		cp.Term = term
		log := e.log.With(zap.String("fleet", it.Fleet), zap.String("instance_id", it.InstanceID), zap.String("op_id", it.OpID))
		d := fleets[it.Fleet]
		if it.Kind == state.Launch {
			if obs, ok := observed[it.InstanceID]; ok && obs.Phase == instance.Running {
				log.Info("resumed launch found its instance")
				e.complete(ctx, log, &cp, state.Done, "", &obs, e.now())
				continue
			} else if ok {
				// The launch was cut short (the agent died during it) or its
				// instance ended before anyone saw it run: abandon it, so
				// the instance is cleaned up as an orphan. It does not count
				// as the image failing to start; a later launch will show.
				log.Info("resumed launch found its instance not running", zap.String("exit_reason", obs.ExitReason))
				e.complete(ctx, log, &cp, state.Abandoned, "the launch was interrupted: its instance does not run ("+obs.ExitReason+")", nil, e.now())
				continue
			}
			if d == nil || d.Generation != it.Generation || d.ImageDigest != it.ImageDigest || d.TemplateHash != it.TemplateHash {
				e.complete(ctx, log, &cp, state.Abandoned, "desired state changed before the launch was confirmed", nil, e.now())
				continue
			}
		}
		if d == nil {
			e.complete(ctx, log, &cp, state.Abandoned, "fleet no longer exists", nil, e.now())
			continue
		}
		if o, ok := observed[it.InstanceID]; it.Kind == state.Admit && (!ok || o.Phase != instance.Running) {
			e.complete(ctx, log, &cp, state.Abandoned, "the instance no longer runs", nil, e.now())
			continue
		}
		log.Info("resuming intent", zap.String("kind", string(it.Kind)), zap.Int("attempts", it.Attempts+1))
		e.Drive(ctx, &cp, d)
	}
	return len(claimed), nil
}
