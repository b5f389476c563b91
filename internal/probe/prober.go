package probe

import (
	"container/heap"
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/immutd/immutd/internal/state"
)

// DefaultWorkers is the number of concurrent probes when Options.Workers
// is not set.
const DefaultWorkers = 64

// Verdict is the judgement of one instance by its checks.
type Verdict struct {
	State State     `json:"state"`
	Since time.Time `json:"since"` // when State last changed
	// Evidence explains a verdict that is not healthy: one line per
	// failing check, from its latest failure, newest first, e.g.
	// `http "ready": GET http://127.0.0.1:4012/healthz: status 500 (3 consecutive failures)`.
	// Empty when State is healthy.
	Evidence []string `json:"evidence,omitempty"`
	// Checks is the state of each check, by check name.
	Checks map[string]CheckStatus `json:"checks"`
}

// Target is one instance to probe.
type Target struct {
	InstanceID string
	Fleet      string
	Address    string // host:port
	Checks     []state.Check
	// Since starts the startup window: when the caller first saw the
	// instance. Zero means when Set first sees it.
	Since time.Time
}

// Options configure a Prober.
type Options struct {
	Logger *zap.Logger
	// Registerer receives immutd_probe_duration_seconds. Nil: not registered.
	Registerer prometheus.Registerer
	// Workers bounds concurrent probes. Default DefaultWorkers.
	Workers int
	// OnChange is called when the aggregate State of an instance changes
	// (not when an instance is added or removed). Calls come one at a
	// time, in order, from one goroutine, never while the Prober holds a
	// lock; a slow OnChange delays only later OnChange calls, and while it
	// runs the changes of one instance are coalesced, so the verdict of the
	// last call for an instance is always its current one.
	OnChange func(instanceID string, v Verdict)
	// Now is the clock of the state machine: result times, verdict times
	// and the startup window. Default time.Now. The schedule always runs
	// on the runtime's timers.
	Now func() time.Time
	// Fault, when it returns an error, makes every probe fail with it
	// without touching the network: the fault-injection hook that lets a
	// test cut one agent off from the instances.
	Fault func() error
}

// Prober probes targets and keeps their verdicts. Its methods are safe for
// concurrent use.
type Prober struct {
	log      *zap.Logger
	workers  int
	onChange func(instanceID string, v Verdict)
	now      func() time.Time
	fault    func() error
	epoch    time.Time // origin of the steady-state probe grid

	checkers  map[string]checker                // by kind: the table of check kinds
	durations map[string][2]prometheus.Observer // by kind, then result index

	// runCheck performs one probe. It is runKind; tests replace it to
	// drive the scheduler without a network or processes.
	runCheck func(ctx context.Context, j *job) (bool, string)
	// afterResult, when set (tests and benchmarks only), is called after
	// each recorded result, outside the lock.
	afterResult func()

	wake   chan struct{} // the queue's head may have moved earlier
	notify chan struct{} // pending holds verdicts to deliver

	mu      sync.Mutex
	running bool
	targets map[string]*target
	queue   queue
	pending map[string]Verdict // changed verdicts not yet given to OnChange
	order   []string           // ids of pending, oldest change first
}

// target is one instance and its checks.
type target struct {
	id      string
	fleet   string
	address string
	raw     []state.Check // as given to Set, to see changes
	jobs    []*job        // one per check
	state   State
	since   time.Time
	hist    history
}

// job is one check of one target: what to probe, its state machine and
// its place in the schedule. A job is replaced, never edited, when its
// target changes; dead marks a replaced or removed job, whose results are
// dropped.
//
// A checker's run may read check, address, t.id, fleet, timeoutDetail
// and describe; nothing else.
type job struct {
	t             *target
	check         state.Check // normalized
	address       string
	op            string // for evidence
	timeoutDetail string
	kind          checker
	observers     [2]prometheus.Observer // durations by result index
	phase         time.Duration
	first         time.Time // when the first probe was due (monotonic)
	// fleet is the target's fleet when the probe in flight started: set
	// under the lock by the worker that runs the probe, read by it alone.
	fleet string

	m      machine
	probe  entry // queued unless its probe is in flight
	expiry entry // queued until the startup window closes
	dead   bool
	cancel context.CancelFunc // of the probe in flight
}

// transition is an aggregate state change, for the log.
type transition struct {
	id, fleet string
	from, to  State
	evidence  []string
}

// New returns a Prober with no targets. It probes nothing until Run.
func New(opts Options) *Prober {
	log := opts.Logger
	if log == nil {
		log = zap.NewNop()
	}
	workers := opts.Workers
	if workers <= 0 {
		workers = DefaultWorkers
	}
	now := opts.Now
	if now == nil {
		now = time.Now
	}
	fault := opts.Fault
	if fault == nil {
		fault = func() error { return nil }
	}
	checkers := newCheckers(checkEnv{workers: workers, dialer: &net.Dialer{KeepAlive: 30 * time.Second}})
	kinds := make([]string, 0, len(checkers))
	for kind := range checkers {
		kinds = append(kinds, kind)
	}
	slices.Sort(kinds)
	p := &Prober{
		fault:    fault,
		log:      log.Named("probe"),
		workers:  workers,
		onChange: opts.OnChange,
		now:      now,
		epoch:    time.Now(),
		checkers: checkers,
		wake:     make(chan struct{}, 1),
		notify:   make(chan struct{}, 1),
		targets:  make(map[string]*target),
		pending:  make(map[string]Verdict),
	}
	p.runCheck = p.runKind
	p.durations = newDurationMetric(opts.Registerer, p.log, kinds)
	return p
}

// Set replaces the set of targets. A new instance is probed at once. An
// instance missing from targets is dropped: its probe in flight is
// cancelled and its late results are discarded. An instance whose address
// or checks changed starts over: its checks restart in starting, with a
// new startup window from now (a changed check must not condemn an
// instance that has been running for long), and its history is cleared.
// Other changes (Fleet, Since) of a known instance only update Fleet.
//
// What a checker keeps for an instance (a gRPC connection) is released
// when the instance is dropped or its address changes.
//
// Checks of an unknown kind, and checks whose name repeats an earlier
// check of the same target, are skipped with a warning: an instance is
// never judged by a check this package cannot run.
func (p *Prober) Set(targets []Target) {
	var (
		warnings []string
		changes  []transition
		released []probed // targets no longer probed at their old address
	)
	mono, now := time.Now(), p.now()
	p.mu.Lock()
	seen := make(map[string]bool, len(targets))
	for i := range targets {
		in := &targets[i]
		if in.InstanceID == "" {
			warnings = append(warnings, "target without instance id skipped")
			continue
		}
		if seen[in.InstanceID] {
			warnings = append(warnings, fmt.Sprintf("instance %s listed twice, later entry skipped", in.InstanceID))
			continue
		}
		seen[in.InstanceID] = true
		t := p.targets[in.InstanceID]
		switch {
		case t == nil:
			start := in.Since
			if start.IsZero() {
				start = now
			}
			t = &target{id: in.InstanceID, since: start}
			p.targets[t.id] = t
			p.reset(t, in, start, mono, now, &warnings)
			t.state = t.aggregate()
		case t.address != in.Address || !checksEqual(t.raw, in.Checks):
			if t.address != in.Address {
				released = append(released, probed{id: t.id, address: t.address})
			}
			p.kill(t)
			p.reset(t, in, now, mono, now, &warnings)
			if tr := p.reaggregate(t, now); tr != nil {
				changes = append(changes, *tr)
			}
		default:
			t.fleet = in.Fleet
		}
	}
	for id, t := range p.targets {
		if !seen[id] {
			released = append(released, probed{id: t.id, address: t.address})
			p.kill(t)
			delete(p.targets, id)
			delete(p.pending, id)
		}
	}
	p.mu.Unlock()
	signal(p.wake)
	p.release(released)
	for _, w := range warnings {
		p.log.Warn("probe target skipped", zap.String("reason", w))
	}
	for _, tr := range changes {
		p.logTransition(tr)
	}
}

// probed is an instance at an address.
type probed struct{ id, address string }

// release tells the checkers that keep something per instance (a
// connection) that the instances of gone are no longer probed at those
// addresses.
func (p *Prober) release(gone []probed) {
	if len(gone) == 0 {
		return
	}
	for _, ck := range p.checkers {
		if r, ok := ck.(releaser); ok {
			for _, t := range gone {
				r.release(t.id, t.address)
			}
		}
	}
}

// reset gives t the address and checks of in, with fresh jobs whose
// startup window starts at start, and queues their first probe for now.
func (p *Prober) reset(t *target, in *Target, start, mono, now time.Time, warnings *[]string) {
	t.fleet = in.Fleet
	t.address = in.Address
	t.raw = slices.Clone(in.Checks)
	t.hist = history{}
	t.jobs = make([]*job, 0, len(in.Checks))
	names := make(map[string]bool, len(in.Checks))
	for _, c := range in.Checks {
		ck, ok := p.checkers[c.Kind]
		if !ok {
			*warnings = append(*warnings, fmt.Sprintf("instance %s: check %q has unsupported kind %q", t.id, c.Name, c.Kind))
			continue
		}
		if names[c.Name] {
			*warnings = append(*warnings, fmt.Sprintf("instance %s: duplicate check name %q", t.id, c.Name))
			continue
		}
		names[c.Name] = true
		c = normalize(ck, c)
		j := &job{
			t:             t,
			check:         c,
			address:       in.Address,
			op:            ck.describe(c, in.Address),
			timeoutDetail: timeoutDetail(c.Timeout),
			kind:          ck,
			observers:     p.durations[c.Kind],
			phase:         phaseOf(t.id, c.Name, c.Interval),
			m: newMachine(c.Kind, thresholds{
				healthy:        c.HealthyThreshold,
				unhealthy:      c.UnhealthyThreshold,
				startupTimeout: c.StartupTimeout,
			}, start),
		}
		j.first = mono
		j.probe = entry{due: mono, job: j, index: -1}
		heap.Push(&p.queue, &j.probe)
		j.expiry = entry{job: j, expiry: true, index: -1}
		if left := j.m.deadline().Sub(now); left > 0 {
			// A window already over is judged by the next result.
			j.expiry.due = mono.Add(left)
			heap.Push(&p.queue, &j.expiry)
		}
		t.jobs = append(t.jobs, j)
	}
}

// kill stops t's jobs: out of the queue, probe in flight cancelled,
// results to come dropped.
func (p *Prober) kill(t *target) {
	for _, j := range t.jobs {
		j.dead = true
		if j.probe.index >= 0 {
			heap.Remove(&p.queue, j.probe.index)
		}
		if j.expiry.index >= 0 {
			heap.Remove(&p.queue, j.expiry.index)
		}
		if j.cancel != nil {
			j.cancel()
			j.cancel = nil
		}
	}
	t.jobs = nil
}

// Run probes the targets until ctx is done, then returns nil after every
// goroutine it started has ended (including an OnChange call in
// progress) and idle connections are closed. Run may be called again
// later; it must not be called while it runs.
func (p *Prober) Run(ctx context.Context) error {
	p.mu.Lock()
	if p.running {
		p.mu.Unlock()
		return errors.New("probe: run: already running")
	}
	p.running = true
	p.mu.Unlock()

	work := make(chan *job)
	var wg sync.WaitGroup
	for range p.workers {
		wg.Go(func() {
			// Probe contexts hang off a context of the worker's own, so
			// that workers do not contend on registering with ctx.
			wctx, cancel := context.WithCancel(ctx)
			defer cancel()
			for j := range work {
				p.probe(wctx, j)
			}
		})
	}
	if p.onChange != nil {
		wg.Go(func() { p.deliver(ctx) })
	}
	p.schedule(ctx, work)
	close(work)
	wg.Wait()
	for _, ck := range p.checkers {
		if c, ok := ck.(idleCloser); ok {
			c.closeIdle()
		}
	}

	// Probes cut short by the end of Run were neither recorded nor
	// rescheduled: queue them for the next Run.
	p.mu.Lock()
	mono := time.Now()
	for _, t := range p.targets {
		for _, j := range t.jobs {
			j.cancel = nil
			if j.probe.index < 0 {
				j.probe.due = mono
				heap.Push(&p.queue, &j.probe)
			}
		}
	}
	p.running = false
	p.mu.Unlock()
	return nil
}

// schedule is the single scheduling loop: it sleeps until the queue's
// head is due, hands due probes to the workers, and closes startup
// windows. A job is out of the queue while its probe is in flight; the
// worker queues it again with the result.
func (p *Prober) schedule(ctx context.Context, work chan<- *job) {
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	var (
		batch   []*job
		changes []transition
	)
	for ctx.Err() == nil {
		clear(batch)
		batch, changes = batch[:0], changes[:0]
		p.mu.Lock()
		mono := time.Now()
		for len(p.queue) > 0 && !p.queue[0].due.After(mono) {
			e := heap.Pop(&p.queue).(*entry)
			if !e.expiry {
				batch = append(batch, e.job)
				continue
			}
			now := p.now()
			if e.job.m.expire(now) {
				if tr := p.reaggregate(e.job.t, now); tr != nil {
					changes = append(changes, *tr)
				}
			}
		}
		wait := time.Duration(-1)
		if len(p.queue) > 0 {
			wait = p.queue[0].due.Sub(mono)
		}
		p.mu.Unlock()

		for _, tr := range changes {
			p.logTransition(tr)
		}
		for _, j := range batch {
			select {
			case work <- j:
			case <-ctx.Done():
				return
			}
		}
		if len(batch) > 0 {
			// Time went by while handing out: look at the queue again.
			continue
		}
		var due <-chan time.Time
		if wait >= 0 {
			timer.Reset(wait)
			due = timer.C
		}
		select {
		case <-ctx.Done():
			return
		case <-p.wake:
		case <-due:
		}
	}
}

// probe runs one probe of j, records its result and queues j's next probe.
func (p *Prober) probe(ctx context.Context, j *job) {
	p.mu.Lock()
	if j.dead {
		p.mu.Unlock()
		return
	}
	// The clock is read before the timeout starts, so that a probe that
	// timed out never lasted less than its timeout.
	at, start := p.now(), time.Now()
	pctx, cancel := context.WithTimeout(ctx, j.check.Timeout)
	j.cancel = cancel
	j.fleet = j.t.fleet
	p.mu.Unlock()

	var ok bool
	var detail string
	if err := p.fault(); err != nil {
		detail = err.Error()
	} else {
		ok, detail = p.runCheck(pctx, j)
	}
	end := time.Now()
	// Cancelled, not timed out: Run is ending, or Set dropped the job.
	// Either way this is no result about the instance.
	cancelled := errors.Is(pctx.Err(), context.Canceled)
	cancel()
	if cancelled {
		return
	}
	dur := end.Sub(start)
	res := resultIndexFailure
	if ok {
		res = resultIndexSuccess
	}
	j.observers[res].Observe(dur.Seconds())
	r := Result{Check: j.check.Name, Kind: j.check.Kind, At: at, Duration: dur, OK: ok, Detail: detail}

	p.mu.Lock()
	j.cancel = nil
	if j.dead {
		p.mu.Unlock()
		return
	}
	j.t.hist.add(r)
	now := p.now()
	var tr *transition
	if j.m.observe(r, now) {
		tr = p.reaggregate(j.t, now)
	}
	j.probe.due = nextDue(j.probe.due, time.Now(), p.epoch, j.first, j.check.Interval, j.phase, j.m.st.State == Starting)
	heap.Push(&p.queue, &j.probe)
	head := j.probe.index == 0
	p.mu.Unlock()

	if head {
		signal(p.wake)
	}
	if tr != nil {
		p.logTransition(*tr)
	}
	if p.afterResult != nil {
		p.afterResult()
	}
}

// runKind runs the check of j's kind.
func (p *Prober) runKind(ctx context.Context, j *job) (bool, string) {
	if j.address == "" {
		return false, "instance has no address"
	}
	return j.kind.run(ctx, j)
}

// reaggregate recomputes t's state after one of its checks changed state.
// If the aggregate changed it records when, queues the verdict for
// OnChange, and returns the transition for the log. p.mu must be held.
func (p *Prober) reaggregate(t *target, now time.Time) *transition {
	s := t.aggregate()
	if s == t.state {
		return nil
	}
	from := t.state
	t.state, t.since = s, now
	v := t.verdict()
	if p.onChange != nil {
		if _, queued := p.pending[t.id]; !queued {
			p.order = append(p.order, t.id)
		}
		p.pending[t.id] = v
		signal(p.notify)
	}
	return &transition{id: t.id, fleet: t.fleet, from: from, to: s, evidence: v.Evidence}
}

// deliver gives changed verdicts to OnChange, one at a time, until ctx is
// done.
func (p *Prober) deliver(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-p.notify:
		}
		for ctx.Err() == nil {
			p.mu.Lock()
			if len(p.order) == 0 {
				p.order = nil
				p.mu.Unlock()
				break
			}
			id := p.order[0]
			p.order = p.order[1:]
			v, ok := p.pending[id]
			delete(p.pending, id)
			p.mu.Unlock()
			if ok {
				p.onChange(id, v)
			}
		}
	}
}

func (p *Prober) logTransition(tr transition) {
	p.log.Info("instance verdict changed",
		zap.String("instance_id", tr.id),
		zap.String("fleet", tr.fleet),
		zap.String("from", string(tr.from)),
		zap.String("to", string(tr.to)),
		zap.Strings("evidence", tr.evidence))
}

// Verdict returns the current verdict of an instance, and false if it is
// not a target.
func (p *Prober) Verdict(instanceID string) (Verdict, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	t, ok := p.targets[instanceID]
	if !ok {
		return Verdict{}, false
	}
	return t.verdict(), true
}

// Verdicts returns the current verdict of every target, by instance id,
// without the per-check states (Checks is nil; Verdict has them): what a
// leader's pass and a verdict report need, cheap for thousands of
// instances.
func (p *Prober) Verdicts() map[string]Verdict {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make(map[string]Verdict, len(p.targets))
	for id, t := range p.targets {
		v := Verdict{State: t.state, Since: t.since}
		if t.state != Healthy {
			v.Evidence = t.evidence()
		}
		out[id] = v
	}
	return out
}

// History returns the kept results of an instance, newest first: the
// last 10 successes and the last 50 failures of all its checks. It is
// nil for an unknown instance.
func (p *Prober) History(instanceID string) []Result {
	p.mu.Lock()
	defer p.mu.Unlock()
	t, ok := p.targets[instanceID]
	if !ok {
		return nil
	}
	return t.hist.results()
}

func (t *target) aggregate() State {
	states := make([]State, 0, len(t.jobs))
	for _, j := range t.jobs {
		states = append(states, j.m.st.State)
	}
	return aggregate(states...)
}

// verdict is a copy of t's verdict.
func (t *target) verdict() Verdict {
	v := Verdict{State: t.state, Since: t.since, Checks: make(map[string]CheckStatus, len(t.jobs))}
	for _, j := range t.jobs {
		v.Checks[j.check.Name] = j.m.st
	}
	if t.state != Healthy {
		v.Evidence = t.evidence()
	}
	return v
}

// evidence describes the latest failure of each failing check, newest
// first. A check is failing when it is unhealthy or never_healthy, or its
// latest result failed.
func (t *target) evidence() []string {
	type line struct {
		at   time.Time
		text string
	}
	var lines []line
	for _, j := range t.jobs {
		st := j.m.st
		if st.LastFailure == (Result{}) {
			continue
		}
		if st.State != Unhealthy && st.State != NeverHealthy && st.ConsecutiveFailures == 0 {
			continue
		}
		var count string
		switch n := st.ConsecutiveFailures; {
		case n == 1:
			count = "1 consecutive failure"
		case n > 1:
			count = fmt.Sprintf("%d consecutive failures", n)
		default:
			count = fmt.Sprintf("recovering: %d of %d successes", st.ConsecutiveSuccesses, j.check.HealthyThreshold)
		}
		lines = append(lines, line{
			at:   st.LastFailure.At,
			text: fmt.Sprintf("%s %q: %s: %s (%s)", j.check.Kind, j.check.Name, j.op, st.LastFailure.Detail, count),
		})
	}
	slices.SortStableFunc(lines, func(a, b line) int { return b.at.Compare(a.at) })
	out := make([]string, len(lines))
	for i, l := range lines {
		out[i] = l.text
	}
	return out
}

// signal wakes the receiver of c without blocking.
func signal(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}
