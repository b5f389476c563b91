// Package leader owns what the raft leader does during one leadership
// term: the reconcile loop. Each pass is a few named steps — observe the
// providers, resume intents no one drives, plan, apply, and keep house
// (record blocks and first-healthy instances, publish what the pass saw)
// — and between passes the term inspects instances for drift, re-pins
// images that did not resolve and reports image references that moved.
//
// The term depends only on the small interfaces it declares here: the
// replicated journal, the providers (reconcile.Provider plus optional
// capabilities found by type assertion), the cluster's verdicts, metrics
// and a clock. The agent wires them; tests use a real state.State behind
// an in-memory journal and small fake providers.
package leader

import (
	"context"
	"fmt"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/immutd/immutd/internal/api"
	"github.com/immutd/immutd/internal/instance"
	"github.com/immutd/immutd/internal/reconcile"
	"github.com/immutd/immutd/internal/state"
)

// Journal is the replicated log, as the leader uses it.
type Journal interface {
	// Read runs fn on the local state under a read lock; fn must not
	// keep references into it.
	Read(fn func(*state.State))
	// Apply commits a command. An error wrapping a "maybe applied" error
	// means leadership was lost while it was in flight.
	Apply(ctx context.Context, c state.Command) (state.Result, error)
	// Term is the current raft term.
	Term() uint64
	// VerifyLeader checks with a quorum that this node still leads.
	VerifyLeader() error
	// Barrier waits until every entry committed before it is applied.
	Barrier(timeout time.Duration) error
	// ServerIDs lists the ids of every server of the cluster.
	ServerIDs() ([]string, error)
}

// Judge gives the cluster's verdict on every instance it has one for.
type Judge interface {
	Judge(now time.Time) map[string]Judgement
}

// Judgement is the cluster's verdict on one instance.
type Judgement struct {
	Health    reconcile.Health
	Evidence  []string
	FailingOn []string
	HealthyOn []string
	// Since is when this agent's own verdict last changed.
	Since time.Time
}

// PassResult is how a reconcile pass ended.
type PassResult string

// Pass results.
const (
	// PassOK: the pass planned and applied.
	PassOK PassResult = "ok"
	// PassResumed: the pass took over intents no one drove; planning
	// waits for the next pass, on state read after the takeover.
	PassResumed PassResult = "resumed"
	// PassError: the pass stopped early (leadership lost, state not
	// readable, a plan not applied).
	PassError PassResult = "error"
)

// PassResults are every result, for metrics that export each one.
var PassResults = []PassResult{PassOK, PassResumed, PassError}

// Metrics receives what the term measures. Nil methods are not called:
// use NopMetrics.
type Metrics interface {
	// Pass is one reconcile pass and its result.
	Pass(result PassResult, took time.Duration)
	// Finished is one provider call whose outcome was journaled.
	Finished(it *state.Intent, provider string, outcome state.Outcome, took time.Duration)
	// Fleet is the planner's status of a fleet after a pass.
	Fleet(st reconcile.FleetStatus)
	// ImageRefMoved says whether a fleet's image reference now names
	// other content than its pinned image.
	ImageRefMoved(fleet string, moved bool)
}

// NopMetrics discards everything.
type NopMetrics struct{}

func (NopMetrics) Pass(PassResult, time.Duration)                               {}
func (NopMetrics) Finished(*state.Intent, string, state.Outcome, time.Duration) {}
func (NopMetrics) Fleet(reconcile.FleetStatus)                                  {}
func (NopMetrics) ImageRefMoved(string, bool)                                   {}

// Settings are the agent's settings that may change while a term runs.
type Settings struct {
	Interval time.Duration
	Limits   reconcile.Limits
}

// Snapshot is what one pass saw, for status. Its fleets are built from
// the pass's input and plan when first asked for, not in the pass: a
// leader watching 100,000 instances makes a pass every second or so and
// is asked for its status far less often.
type Snapshot struct {
	At     time.Time
	once   sync.Once
	build  func() []api.Fleet
	fleets []api.Fleet
}

// NewSnapshot is a snapshot of fleets built already.
func NewSnapshot(at time.Time, fleets []api.Fleet) *Snapshot {
	return &Snapshot{At: at, build: func() []api.Fleet { return fleets }}
}

// Fleets is the status of every fleet, as the pass saw them. The slice is
// shared: callers copy before they change it.
func (s *Snapshot) Fleets() []api.Fleet {
	s.once.Do(func() { s.fleets, s.build = s.build(), nil })
	return s.fleets
}

// Config is everything a term needs.
type Config struct {
	// Node names this agent in events and intents.
	Node      string
	Journal   Journal
	Providers map[string]reconcile.Provider
	Judge     Judge
	Metrics   Metrics
	Log       *zap.Logger
	// Now is the clock; default time.Now. It is read in one place per
	// step and passed down.
	Now func() time.Time
	// Settings returns the current settings; default: a 1s interval, no
	// limits.
	Settings func() Settings
	// Wake delivers requests for a pass now (provider events, finished
	// intents, changes of verdicts or desired state).
	Wake <-chan struct{}
	// Notify asks for a pass now (it sends on Wake's channel).
	Notify func()
	// Publish receives the snapshot of every pass; default: dropped.
	Publish func(*Snapshot)
	// Executor tunes the executor (retries); tests make it fast.
	Executor reconcile.ExecutorOptions
	// Backends are the traffic backends of fleets with a traffic gate;
	// nil when the agent has none (gated fleets then fail their traffic
	// steps with a reason).
	Backends reconcile.Backends
}

// Timings of the background work of a term.
const (
	// resolveRetry is how often images that did not resolve are tried
	// again.
	resolveRetry = 10 * time.Second
	// refCheckInterval is how often the image references that can move
	// (see RefChecker) are resolved again to see whether they did.
	refCheckInterval = 30 * time.Second
	// driftTick is how often the drift inspector looks for instances
	// whose inspection is due.
	driftTick = 250 * time.Millisecond
	// barrierRetry is the wait before a failed barrier is tried again.
	barrierRetry = time.Second
	// listTimeout and resolveTimeout bound provider calls of a pass.
	listTimeout    = 10 * time.Second
	resolveTimeout = 2 * time.Minute
)

// Term is one leadership term. Its methods other than Run may be called
// from other goroutines once Ready reports true.
type Term struct {
	cfg  Config
	log  *zap.Logger
	exec *reconcile.Executor

	// group holds every goroutine the term starts; Run waits for it.
	group sync.WaitGroup

	ready     chan struct{}
	readyOnce sync.Once
	start     time.Time
	passes    int

	// driftMu guards drift and observed (the inspector runs apart).
	driftMu  sync.Mutex
	drift    map[string]driftEntry
	observed map[string]instance.Observed

	// mu guards listBackoff (event streams touch it) and judged.
	mu          sync.Mutex
	listBackoff map[string]*listRetry
	judged      map[string]Judgement
	// seen is what the last pass observed.
	seen *seen

	// traffic is the traffic gate's view (backend sync, connections);
	// health follows the verdicts' clocks.
	traffic *trafficState
	health  *healthClock

	// Only Run's goroutine touches these.
	blocked map[string]string
	// retries counts, per fleet, the launch retries of a failure streak
	// that recordBlocks folded into its one blocked event; inBackoff says
	// whether the last pass saw the backoff itself.
	retries        map[string]int
	inBackoff      map[string]bool
	watching       map[string]bool
	lastResolveTry time.Time
	lastRefCheck   time.Time
	moved          map[string]string
}

// New prepares a term; Run runs it.
func New(cfg Config) *Term {
	if cfg.Log == nil {
		cfg.Log = zap.NewNop()
	}
	if cfg.Metrics == nil {
		cfg.Metrics = NopMetrics{}
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Settings == nil {
		cfg.Settings = func() Settings { return Settings{Interval: time.Second} }
	}
	if cfg.Notify == nil {
		cfg.Notify = func() {}
	}
	if cfg.Publish == nil {
		cfg.Publish = func(*Snapshot) {}
	}
	t := &Term{cfg: cfg, log: cfg.Log, ready: make(chan struct{}), drift: map[string]driftEntry{}, observed: map[string]instance.Observed{},
		listBackoff: map[string]*listRetry{}, judged: map[string]Judgement{}, blocked: map[string]string{}, retries: map[string]int{}, inBackoff: map[string]bool{}, watching: map[string]bool{},
		moved: map[string]string{}, traffic: newTrafficState(), health: newHealthClock()}
	eo := cfg.Executor
	eo.Backends, eo.OnConnections = cfg.Backends, t.traffic.connections
	eo.Journal, eo.Providers, eo.Node, eo.Observer, eo.Wake, eo.Now = cfg.Journal, cfg.Providers, cfg.Node, t, cfg.Notify, cfg.Now
	if eo.Logger == nil {
		eo.Logger = cfg.Log.Named("executor")
	}
	t.exec = reconcile.NewExecutor(eo)
	return t
}

// Ready is closed once the term has established leadership (its barrier
// is through) and it accepts commits.
func (t *Term) Ready() <-chan struct{} { return t.ready }

// Run runs the term until ctx is cancelled (leadership lost, or the
// agent stops): a barrier, so that nothing is decided on state older than
// what earlier leaders committed, then passes on every wake and at least
// every interval. When it returns, every goroutine it started and every
// provider call it made have returned.
func (t *Term) Run(ctx context.Context) {
	t.start = t.cfg.Now()
	defer t.group.Wait()
	defer t.exec.Wait()
	for {
		err := t.cfg.Journal.Barrier(time.Minute)
		if err == nil {
			break
		}
		t.log.Warn("barrier failed; retrying", zap.Error(err))
		select {
		case <-ctx.Done():
			return
		case <-time.After(barrierRetry):
		}
	}
	now := t.cfg.Now()
	t.lastResolveTry, t.lastRefCheck = now, now
	t.readyOnce.Do(func() { close(t.ready) })
	t.log.Info("leadership established", zap.Uint64("term", t.cfg.Journal.Term()), zap.Float64("duration_seconds", now.Sub(t.start).Seconds()))
	t.goRun(func() { t.inspectDrift(ctx) })
	t.goRun(func() { t.analyze(ctx) })
	t.cfg.Notify()
	for {
		timer := time.NewTimer(t.cfg.Settings().Interval)
		select {
		case <-ctx.Done():
			timer.Stop()
			return
		case <-t.cfg.Wake:
		case <-timer.C:
		}
		timer.Stop()
		t.Step(ctx)
	}
}

// Step is one pass and the housekeeping after it.
func (t *Term) Step(ctx context.Context) {
	start := t.cfg.Now()
	result, err := t.pass(ctx, start)
	t.cfg.Metrics.Pass(result, t.cfg.Now().Sub(start))
	if err != nil {
		if ctx.Err() == nil {
			t.log.Warn("reconcile pass failed", zap.Error(err))
		}
		return
	}
	if t.passes++; t.passes == 1 {
		t.announce(ctx)
	}
	t.housekeeping(ctx)
}

// goRun starts fn in the term's group.
func (t *Term) goRun(fn func()) {
	t.group.Add(1)
	go func() {
		defer t.group.Done()
		fn()
	}()
}

// announce records that this leader finished its first reconcile pass:
// the end of a failover, as operators and benchmarks see it.
func (t *Term) announce(ctx context.Context) {
	now := t.cfg.Now()
	ev := state.Event{Time: now, Action: state.ActionLeaderReady, Reason: "leadership_established", Node: t.cfg.Node,
		Evidence: []string{fmt.Sprintf("term %d", t.cfg.Journal.Term()), fmt.Sprintf("first reconcile pass done %dms after becoming leader", now.Sub(t.start).Milliseconds())}}
	t.record(ctx, ev)
	t.log.Info("leader ready", zap.Float64("duration_seconds", now.Sub(t.start).Seconds()))
}

// record journals informational events.
func (t *Term) record(ctx context.Context, evs ...state.Event) {
	if len(evs) == 0 {
		return
	}
	if _, err := t.cfg.Journal.Apply(ctx, &state.RecordEvents{Events: evs}); err != nil && ctx.Err() == nil {
		t.log.Warn("could not record events", zap.String("action", string(evs[0].Action)), zap.Error(err))
	}
}

// housekeeping retries failed image resolutions and reports image
// references that moved to other content.
func (t *Term) housekeeping(ctx context.Context) {
	now := t.cfg.Now()
	if now.Sub(t.lastResolveTry) >= resolveRetry {
		t.lastResolveTry = now
		if err := t.Repin(ctx, nil); err != nil && ctx.Err() == nil {
			t.log.Warn("re-resolving images failed", zap.Error(err))
		}
	}
	if now.Sub(t.lastRefCheck) >= refCheckInterval {
		t.lastRefCheck = now
		t.checkRefs(ctx)
	}
}

// Finished implements reconcile.Observer.
func (t *Term) Finished(it *state.Intent, outcome state.Outcome, took time.Duration) {
	prov := ""
	t.cfg.Journal.Read(func(st *state.State) {
		if f := st.Fleets[it.Fleet]; f != nil {
			prov = f.Spec.Provider
		}
	})
	t.cfg.Metrics.Finished(it, prov, outcome, took)
}

// Judged returns the cluster's verdicts of the last pass.
func (t *Term) Judged() map[string]Judgement {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.judged
}
