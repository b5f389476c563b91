package leader

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/immutd/immutd/internal/instance"
	"github.com/immutd/immutd/internal/quantity"
	"github.com/immutd/immutd/internal/reconcile"
	"github.com/immutd/immutd/internal/state"
)

var t0 = time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)

// memJournal applies commands to a real state.State through their
// encoding, as the raft FSM does, without raft.
type memJournal struct {
	mu         sync.Mutex
	st         *state.State
	term       uint64
	leaderErr  error
	barrierErr []error // returned by the next Barrier calls, then nil
	servers    []string
	applied    []state.Command
}

func newJournal() *memJournal {
	return &memJournal{st: state.New(), term: 3, servers: []string{"self"}}
}

func (j *memJournal) Apply(_ context.Context, c state.Command) (state.Result, error) {
	b, err := state.Encode(c)
	if err != nil {
		return state.Result{}, err
	}
	d, err := state.Decode(b)
	if err != nil {
		return state.Result{}, err
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	j.applied = append(j.applied, d)
	return j.st.Apply(d), nil
}

func (j *memJournal) Read(fn func(*state.State)) {
	j.mu.Lock()
	defer j.mu.Unlock()
	fn(j.st)
}

func (j *memJournal) Term() uint64 { return j.term }

func (j *memJournal) VerifyLeader() error {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.leaderErr
}

func (j *memJournal) Barrier(time.Duration) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if len(j.barrierErr) > 0 {
		err := j.barrierErr[0]
		j.barrierErr = j.barrierErr[1:]
		return err
	}
	return nil
}

func (j *memJournal) ServerIDs() ([]string, error) { return j.servers, nil }

// events returns the actions of the journal's events, in order.
func (j *memJournal) events() []state.Event {
	var out []state.Event
	j.Read(func(st *state.State) { out = st.EventsSince(0, 0) })
	return out
}

func (j *memJournal) hasEvent(action state.EventAction, reason string) bool {
	for _, e := range j.events() {
		if e.Action == action && (reason == "" || e.Reason == reason) {
			return true
		}
	}
	return false
}

// fakeProvider keeps instances in memory. Everything a test needs to
// steer is a field under mu.
type fakeProvider struct {
	mu         sync.Mutex
	instances  map[string]instance.Observed
	listErr    error
	lists      int
	onList     func(ctx context.Context) // runs inside List, before it answers
	launched   []string
	terminated []string
	findings   map[string]*instance.Finding
	inspected  []string
	resolved   []string
	digest     string
	launchGate chan struct{} // when set, Launch waits for it to close
}

func newProvider() *fakeProvider {
	return &fakeProvider{instances: map[string]instance.Observed{}, findings: map[string]*instance.Finding{}, digest: "sha256:v1"}
}

func (p *fakeProvider) List(ctx context.Context) ([]instance.Observed, error) {
	p.mu.Lock()
	hook := p.onList
	p.mu.Unlock()
	if hook != nil {
		hook(ctx)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.lists++
	if p.listErr != nil {
		return nil, p.listErr
	}
	out := make([]instance.Observed, 0, len(p.instances))
	for _, o := range p.instances {
		out = append(out, o)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

func (p *fakeProvider) Launch(ctx context.Context, r instance.LaunchRequest) (instance.Observed, error) {
	p.mu.Lock()
	gate := p.launchGate
	p.mu.Unlock()
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return instance.Observed{}, ctx.Err()
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.launched = append(p.launched, r.InstanceID)
	o := instance.Observed{ID: r.InstanceID, Fleet: r.Fleet, ImageDigest: r.ImageDigest, TemplateHash: r.TemplateHash,
		Phase: instance.Running, Address: "127.0.0.1:1", StartedAt: t0}
	p.instances[r.InstanceID] = o
	return o, nil
}

func (p *fakeProvider) Terminate(_ context.Context, id string, _ time.Duration) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.terminated = append(p.terminated, id)
	delete(p.instances, id)
	return nil
}

func (p *fakeProvider) Inspect(_ context.Context, o instance.Observed, _ []string) (*instance.Finding, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.inspected = append(p.inspected, o.ID)
	if _, ok := p.instances[o.ID]; !ok {
		return nil, fmt.Errorf("fake: %w", instance.ErrGone)
	}
	return p.findings[o.ID], nil
}

func (p *fakeProvider) Resolve(_ context.Context, ref string) (string, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.resolved = append(p.resolved, ref)
	return p.digest, nil
}

func (p *fakeProvider) state() (launched, terminated []string, n int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.launched...), append([]string(nil), p.terminated...), len(p.instances)
}

// refProvider is a fakeProvider whose references can move.
type refProvider struct {
	*fakeProvider
	now string
}

func (p *refProvider) CheckRef(context.Context, string) (string, error) { return p.now, nil }

// fakeJudge returns fixed verdicts: healthy for every instance unless set.
type fakeJudge struct {
	mu     sync.Mutex
	health map[string]reconcile.Health
	p      *fakeProvider
}

func (j *fakeJudge) Judge(time.Time) map[string]Judgement {
	j.mu.Lock()
	defer j.mu.Unlock()
	out := map[string]Judgement{}
	j.p.mu.Lock()
	defer j.p.mu.Unlock()
	for id := range j.p.instances {
		h := reconcile.Healthy
		if v, ok := j.health[id]; ok {
			h = v
		}
		out[id] = Judgement{Health: h, Evidence: []string{"fake " + string(h)}}
	}
	return out
}

func (j *fakeJudge) set(id string, h reconcile.Health) {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.health[id] = h
}

// clock is a test's time.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// metricsRec records what the term measured.
type metricsRec struct {
	mu     sync.Mutex
	passes map[PassResult]int
	moved  map[string]bool
	fleets map[string]reconcile.FleetStatus
}

func (m *metricsRec) Pass(r PassResult, _ time.Duration)                           { m.mu.Lock(); m.passes[r]++; m.mu.Unlock() }
func (m *metricsRec) Finished(*state.Intent, string, state.Outcome, time.Duration) {}
func (m *metricsRec) Fleet(st reconcile.FleetStatus) {
	m.mu.Lock()
	m.fleets[st.Fleet] = st
	m.mu.Unlock()
}
func (m *metricsRec) ImageRefMoved(f string, moved bool) {
	m.mu.Lock()
	m.moved[f] = moved
	m.mu.Unlock()
}

// rig is a term with everything it talks to faked, but the state.
type rig struct {
	t     testing.TB
	term  *Term
	j     *memJournal
	p     *fakeProvider
	judge *fakeJudge
	clk   *clock
	m     *metricsRec
	logs  *observer.ObservedLogs
	snaps []*Snapshot
	mu    sync.Mutex
}

func newRig(t testing.TB, providers ...func(*fakeProvider) reconcile.Provider) *rig {
	t.Helper()
	core, logs := observer.New(zap.DebugLevel)
	r := &rig{t: t, j: newJournal(), p: newProvider(), clk: &clock{now: t0}, logs: logs,
		m: &metricsRec{passes: map[PassResult]int{}, moved: map[string]bool{}, fleets: map[string]reconcile.FleetStatus{}}}
	r.judge = &fakeJudge{health: map[string]reconcile.Health{}, p: r.p}
	var prov reconcile.Provider = r.p
	if len(providers) > 0 {
		prov = providers[0](r.p)
	}
	r.term = New(Config{Node: "n1", Journal: r.j, Providers: map[string]reconcile.Provider{"fake": prov}, Judge: r.judge, Metrics: r.m,
		Log: zap.New(core), Now: r.clk.Now, Publish: func(s *Snapshot) { r.mu.Lock(); r.snaps = append(r.snaps, s); r.mu.Unlock() },
		Executor: reconcile.ExecutorOptions{Backoff: time.Millisecond}})
	close(r.term.ready)
	return r
}

// spec is a fleet of the fake provider.
func spec(name string, size int) state.FleetSpec {
	return state.FleetSpec{Name: name, Size: size, Provider: "fake", Image: "img:1",
		Drift:       state.DriftSpec{Interval: time.Second, Orphans: state.OrphanAdopt},
		Remediation: state.RemediationSpec{Enabled: true, MaxUnhealthy: quantity.Percent(50), MaxParallel: 1},
		Rollout:     state.RolloutSpec{MaxSurge: quantity.Count(1)}}
}

func (r *rig) commit(specs ...state.FleetSpec) {
	r.t.Helper()
	if err := r.term.Commit(context.Background(), &Proposal{Specs: specs, SourceHash: fmt.Sprint(len(r.j.applied)), ProposerID: "self", Proposer: "n1"}); err != nil {
		r.t.Fatal(err)
	}
}

// step runs one pass and waits for the provider calls it started.
func (r *rig) step() {
	r.t.Helper()
	r.term.Step(context.Background())
	r.term.exec.Wait()
}

func (r *rig) records() map[string]state.Instance {
	out := map[string]state.Instance{}
	r.j.Read(func(st *state.State) {
		for id, in := range st.Instances {
			out[id] = *in
		}
	})
	return out
}

func (r *rig) openIntents() int {
	n := 0
	r.j.Read(func(st *state.State) { n = len(st.Intents) })
	return n
}

func TestPassLaunchesToSizeAndMarksHealthy(t *testing.T) {
	r := newRig(t)
	r.commit(spec("web", 2))
	r.step()
	if launched, _, n := r.p.state(); len(launched) != 2 || n != 2 {
		t.Fatalf("launched %v, %d instances", launched, n)
	}
	r.step() // the launched instances are judged healthy
	for id, rec := range r.records() {
		if !rec.EverHealthy {
			t.Errorf("instance %s not marked healthy", id)
		}
	}
	r.step()
	if launched, terminated, _ := r.p.state(); len(launched) != 2 || len(terminated) != 0 {
		t.Fatalf("a steady fleet: launched %v, terminated %v", launched, terminated)
	}
	if r.m.passes["ok"] != 3 || r.m.fleets["web"].States["healthy"] != 2 {
		t.Fatalf("metrics: passes %v, fleet %+v", r.m.passes, r.m.fleets["web"])
	}
	if !r.j.hasEvent("leader_ready", "") {
		t.Error("no leader_ready event after the first pass")
	}
	last := r.snaps[len(r.snaps)-1]
	if len(last.Fleets()) != 1 || len(last.Fleets()[0].Instances) != 2 || last.Fleets()[0].Instances[0].State != "healthy" {
		t.Fatalf("published snapshot: %+v", last.Fleets())
	}
}

// TestPassReadsStateBeforeObserving: a launch that finishes while the
// provider is being listed (recorded, but not in the listing) must not
// make this pass see a recorded instance the provider does not list — it
// would terminate it as gone and launch another. The state is read
// before the provider is observed, so the pass sees the launch open.
func TestPassReadsStateBeforeObserving(t *testing.T) {
	r := newRig(t)
	gate := make(chan struct{})
	r.p.launchGate = gate
	r.commit(spec("web", 1))
	r.term.Step(context.Background()) // the launch starts and waits at the gate
	var it *state.Intent
	r.j.Read(func(st *state.State) {
		for _, x := range st.Intents {
			it = x
		}
	})
	if it == nil {
		t.Fatal("no launch intent")
	}
	r.p.mu.Lock()
	r.p.onList = func(ctx context.Context) {
		r.p.mu.Lock()
		r.p.onList = nil
		r.p.mu.Unlock()
		o := instance.Observed{ID: it.InstanceID, Fleet: "web", ImageDigest: it.ImageDigest, TemplateHash: it.TemplateHash, Phase: instance.Running}
		_, _ = r.j.Apply(ctx, &state.CompleteIntent{OpID: it.OpID, Term: it.Term, Outcome: state.Done, Observed: &o, At: t0})
	}
	r.p.mu.Unlock()
	before := len(r.j.applied)
	r.term.Step(context.Background())
	close(gate)
	r.term.exec.Wait()
	for _, c := range r.j.applied[before:] {
		if ci, ok := c.(*state.CommitIntents); ok && len(ci.Intents) > 0 {
			t.Fatalf("the pass planned %s of %s (%s) on state read after the listing", ci.Intents[0].Kind, ci.Intents[0].InstanceID, ci.Intents[0].Reason)
		}
	}
}

// TestResumeTakesOverOrphanedIntents: an earlier leader's open launch
// whose instance exists is completed, and its open terminate is driven
// to its end; planning waits for the next pass.
func TestResumeTakesOverOrphanedIntents(t *testing.T) {
	r := newRig(t)
	r.commit(spec("web", 1))
	var gen uint64
	r.j.Read(func(st *state.State) { gen = st.Generation })
	ws := spec("web", 1)
	tmpl := ws.TemplateHash()
	r.p.instances["web-new"] = instance.Observed{ID: "web-new", Fleet: "web", ImageDigest: "sha256:v1", TemplateHash: tmpl, Phase: instance.Running}
	r.p.instances["web-old"] = instance.Observed{ID: "web-old", Fleet: "web", ImageDigest: "sha256:v1", TemplateHash: tmpl, Phase: instance.Running}
	ctx := context.Background()
	_, _ = r.j.Apply(ctx, &state.Adopt{Instances: []*state.Instance{{ID: "web-old", Fleet: "web", ImageDigest: "sha256:v1", TemplateHash: tmpl}}, At: t0})
	_, _ = r.j.Apply(ctx, &state.CommitIntents{Generation: gen, At: t0, Intents: []*state.Intent{
		{OpID: "l1", Kind: state.Launch, Fleet: "web", InstanceID: "web-new", Reason: "replacement", Term: 2, Generation: gen, ImageDigest: "sha256:v1", TemplateHash: tmpl},
		{OpID: "k1", Kind: state.Terminate, Fleet: "web", InstanceID: "web-old", Reason: "unhealthy", Term: 2, Generation: gen},
	}})
	r.step()
	if r.m.passes["resumed"] != 1 {
		t.Fatalf("passes %v, want one resumed", r.m.passes)
	}
	launched, terminated, _ := r.p.state()
	if len(launched) != 0 || len(terminated) != 1 || terminated[0] != "web-old" {
		t.Fatalf("resume: launched %v, terminated %v", launched, terminated)
	}
	if recs := r.records(); len(recs) != 1 || recs["web-new"].LaunchOp != "l1" {
		t.Fatalf("records after resume: %+v", recs)
	}
	if r.openIntents() != 0 {
		t.Fatalf("%d intents still open", r.openIntents())
	}
}

// TestProviderListFailureBlocksAndBacksOff: a provider that cannot be
// listed blocks its fleet (recorded once), is not asked again before its
// backoff ends, and unblocks when it answers.
func TestProviderListFailureBlocksAndBacksOff(t *testing.T) {
	r := newRig(t)
	r.commit(spec("web", 1))
	r.p.listErr = errors.New("connection refused")
	r.step()
	if !r.j.hasEvent("remediation_blocked", string(reconcile.CauseProviderUnreachable)) {
		t.Fatal("no remediation_blocked provider_unreachable event")
	}
	r.step()
	if r.p.lists != 1 {
		t.Fatalf("the provider was listed %d times during its backoff", r.p.lists)
	}
	r.clk.advance(listBackoffMin)
	r.step()
	if r.p.lists != 2 {
		t.Fatalf("the provider was listed %d times after its backoff", r.p.lists)
	}
	if launched, _, _ := r.p.state(); len(launched) != 0 {
		t.Fatalf("launched %v while the provider could not be listed", launched)
	}
	n := 0
	for _, e := range r.j.events() {
		if e.Action == "remediation_blocked" {
			n++
		}
	}
	if n != 1 {
		t.Fatalf("%d remediation_blocked events for one outage", n)
	}
	r.p.mu.Lock()
	r.p.listErr = nil
	r.p.mu.Unlock()
	r.clk.advance(listBackoffMax)
	r.step()
	if !r.j.hasEvent("remediation_unblocked", string(reconcile.CauseProviderUnreachable)) {
		t.Fatal("no remediation_unblocked event once the provider answered")
	}
	if launched, _, _ := r.p.state(); len(launched) != 1 {
		t.Fatalf("launched %v once the provider answered", launched)
	}
}

// TestDriftFindingReachesThePlanner: an inspection that finds an
// in-place change leads to a replacement, surge-first.
func TestDriftFindingReachesThePlanner(t *testing.T) {
	r := newRig(t)
	r.commit(spec("web", 1))
	r.step()
	r.step()
	launched, _, _ := r.p.state()
	victim := launched[0]
	r.p.mu.Lock()
	r.p.findings[victim] = &instance.Finding{Kind: instance.DriftMutated, Evidence: []string{"modified app.conf"}}
	r.p.mu.Unlock()
	r.term.inspectDue(context.Background())
	r.step() // replacement launched
	r.step() // it is healthy: the changed instance goes
	launched, terminated, _ := r.p.state()
	if len(launched) != 2 || len(terminated) != 1 || terminated[0] != victim {
		t.Fatalf("launched %v, terminated %v, want a replacement of %s", launched, terminated, victim)
	}
	if !r.j.hasEvent("terminated", string(reconcile.ReasonDriftMutated)) {
		t.Fatal("no terminated event with reason drift_mutated")
	}
}

// TestDriftInspectionSkipsInstancesGoing: an instance with an open
// intent is not inspected, and one removed during its inspection is not
// reported.
func TestDriftInspectionSkipsInstancesGoing(t *testing.T) {
	r := newRig(t)
	r.commit(spec("web", 1))
	r.step()
	r.step()
	launched, _, _ := r.p.state()
	id := launched[0]
	var gen uint64
	r.j.Read(func(st *state.State) { gen = st.Generation })
	_, _ = r.j.Apply(context.Background(), &state.CommitIntents{Generation: gen, At: t0, Intents: []*state.Intent{
		{OpID: "k", Kind: state.Terminate, Fleet: "web", InstanceID: id, Reason: "excess", Term: 3, Generation: gen}}})
	r.p.mu.Lock()
	r.p.inspected = nil
	r.p.mu.Unlock()
	r.term.inspectDue(context.Background())
	if len(r.p.inspected) != 0 {
		t.Fatalf("inspected %v, which immutd is terminating", r.p.inspected)
	}
	if n := r.logs.FilterMessage("drift inspection failed").Len() + r.logs.FilterMessage("instance drifted").Len(); n != 0 {
		t.Fatalf("%d drift warnings for an instance being removed", n)
	}
}

// TestLeadershipLostMidPass: the context ends while a provider is
// listed; the pass stops, records nothing, and does not log the provider
// as unreachable or back it off.
func TestLeadershipLostMidPass(t *testing.T) {
	r := newRig(t)
	r.commit(spec("web", 1))
	ctx, cancel := context.WithCancel(context.Background())
	r.p.onList = func(lctx context.Context) {
		cancel()
		<-lctx.Done()
	}
	r.p.listErr = context.Canceled
	r.term.Step(ctx)
	r.term.exec.Wait()
	if r.m.passes["error"] != 1 {
		t.Fatalf("passes %v", r.m.passes)
	}
	if n := r.logs.FilterMessageSnippet("provider unreachable").Len(); n != 0 {
		t.Fatal("leadership loss logged as 'provider unreachable'")
	}
	if r.term.listWaiting("fake") != "" {
		t.Fatal("the provider backs off after a leadership loss")
	}
	if launched, _, _ := r.p.state(); len(launched) != 0 {
		t.Fatalf("launched %v after leadership loss", launched)
	}
}

// TestTerminateNeedsConfirmedLeadership: with leadership not confirmed
// by a quorum, no instance is terminated.
func TestTerminateNeedsConfirmedLeadership(t *testing.T) {
	r := newRig(t)
	r.commit(spec("web", 2))
	r.step()
	r.step()
	r.commit(spec("web", 1))
	r.j.mu.Lock()
	r.j.leaderErr = errors.New("not leader")
	r.j.mu.Unlock()
	r.step()
	if _, terminated, _ := r.p.state(); len(terminated) != 0 {
		t.Fatalf("terminated %v without confirmed leadership", terminated)
	}
}

// TestCommitPinsEachImageOnce: a proposal of many fleets naming one image
// resolves it once; a fleet whose image did not change keeps its digest
// without resolving again.
func TestCommitPinsEachImageOnce(t *testing.T) {
	r := newRig(t)
	var specs []state.FleetSpec
	for i := 0; i < 20; i++ {
		specs = append(specs, spec(fmt.Sprintf("f%02d", i), 0))
	}
	r.commit(specs...)
	if len(r.p.resolved) != 1 {
		t.Fatalf("20 fleets of one image resolved it %d times", len(r.p.resolved))
	}
	r.p.digest = "sha256:v2"
	specs[0].Size = 3
	r.commit(specs...)
	if len(r.p.resolved) != 1 {
		t.Fatalf("a recommit of unchanged images resolved %d times", len(r.p.resolved))
	}
	var d *state.DesiredFleet
	r.j.Read(func(st *state.State) { d = st.Fleets["f00"] })
	if d.ImageDigest != "sha256:v1" || d.Spec.Size != 3 {
		t.Fatalf("f00 after the size change: %+v", d)
	}
	if err := New(Config{Journal: r.j, Judge: r.judge}).Commit(context.Background(), &Proposal{}); !errors.Is(err, ErrNotReady) {
		t.Fatalf("commit on a term that is not ready: %v", err)
	}
}

// TestMovedImageRefIsReportedNotRolled: a reference that now names other
// content is an event and a metric, and the fleet keeps its digest.
func TestMovedImageRefIsReportedNotRolled(t *testing.T) {
	var rp *refProvider
	r := newRig(t, func(p *fakeProvider) reconcile.Provider {
		rp = &refProvider{fakeProvider: p, now: "sha256:v1"}
		return rp
	})
	r.commit(spec("web", 0))
	r.term.checkRefs(context.Background())
	if r.m.moved["web"] || r.j.hasEvent("image_ref_moved", "") {
		t.Fatal("reported a reference that did not move")
	}
	rp.now = "sha256:v9"
	r.term.checkRefs(context.Background())
	r.term.checkRefs(context.Background())
	n := 0
	for _, e := range r.j.events() {
		if e.Action == "image_ref_moved" {
			n++
		}
	}
	if !r.m.moved["web"] || n != 1 {
		t.Fatalf("moved metric %v, %d events", r.m.moved["web"], n)
	}
	var d *state.DesiredFleet
	r.j.Read(func(st *state.State) { d = st.Fleets["web"] })
	if d.ImageDigest != "sha256:v1" {
		t.Fatalf("the fleet rolled to %s by itself", d.ImageDigest)
	}
	if err := r.term.Repin(context.Background(), map[string]bool{"web": true}); err != nil {
		t.Fatal(err)
	}
	r.j.Read(func(st *state.State) { d = st.Fleets["web"] })
	if d.ImageDigest != "sha256:v1" && d.ImageDigest != "sha256:v2" {
		t.Fatalf("after fleet resolve: %s", d.ImageDigest)
	}
}

// TestRunWaitsForItsWork: Run retries a failed barrier, becomes ready,
// and when its context ends returns only after its goroutines and the
// provider calls it started have returned.
func TestRunWaitsForItsWork(t *testing.T) {
	j := newJournal()
	j.barrierErr = []error{errors.New("timeout")}
	p := newProvider()
	wake := make(chan struct{}, 1)
	term := New(Config{Node: "n1", Journal: j, Providers: map[string]reconcile.Provider{"fake": p}, Judge: &fakeJudge{health: map[string]reconcile.Health{}, p: p},
		Wake: wake, Notify: func() {
			select {
			case wake <- struct{}{}:
			default:
			}
		}, Settings: func() Settings { return Settings{Interval: time.Hour} }})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { term.Run(ctx); close(done) }()
	select {
	case <-term.Ready():
	case <-time.After(time.Minute):
		t.Fatal("the term never became ready")
	}
	if err := term.Commit(context.Background(), &Proposal{Specs: []state.FleetSpec{spec("web", 2)}, SourceHash: "h", ProposerID: "self"}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(time.Minute)
	for {
		if _, _, n := p.state(); n == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("Run did not launch the fleet")
		}
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	select {
	case <-done:
	case <-time.After(time.Minute):
		t.Fatal("Run did not return after its context ended")
	}
}

// TestLaunchBackoffRetriesAreOneBlock: a fleet whose launches keep failing
// is blocked once; its backoff running out (a retry) while the failures
// last is not an unblock, and the unblock comes when they are over.
func TestLaunchBackoffRetriesAreOneBlock(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	now := r.clk.Now()
	// A fleet of 1 without a healthy instance: its launches keep failing.
	blocked := reconcile.Result{Fleets: []reconcile.FleetStatus{{Fleet: "web", Desired: 1,
		Blocked: []reconcile.Block{{Cause: reconcile.CauseLaunchBackoff, Detail: "3 consecutive instances failed"}}}}}
	retrying := reconcile.Result{Fleets: []reconcile.FleetStatus{{Fleet: "web", Desired: 1}}}
	failing := map[string]state.FleetStats{"web": {LaunchFailures: 3}}
	for i := 0; i < 3; i++ {
		r.term.recordBlocks(ctx, blocked, failing, now)
		r.term.recordBlocks(ctx, retrying, failing, now)
	}
	count := func(action string) int {
		n := 0
		for _, e := range r.j.events() {
			if e.Action == state.EventAction(action) {
				n++
			}
		}
		return n
	}
	if b, u := count("remediation_blocked"), count("remediation_unblocked"); b != 1 || u != 0 {
		t.Fatalf("three retries of a failing launch: %d blocked and %d unblocked events, want 1 and 0", b, u)
	}
	r.term.recordBlocks(ctx, retrying, map[string]state.FleetStats{"web": {}}, now)
	if u := count("remediation_unblocked"); u != 1 {
		t.Fatalf("launches healthy again: %d unblocked events, want 1", u)
	}
	// The one unblock counts the retries folded into the block.
	for _, e := range r.j.events() {
		if e.Action == "remediation_unblocked" && (len(e.Evidence) != 1 || !strings.HasPrefix(e.Evidence[0], "after 3 launch retries that failed too")) {
			t.Fatalf("unblocked event %+v; want it to count 3 retries", e)
		}
	}
	// Another cause next to the retry is a change, and says so.
	r.term.recordBlocks(ctx, blocked, failing, now)
	paused := reconcile.Result{Fleets: []reconcile.FleetStatus{{Fleet: "web", Desired: 1, Blocked: []reconcile.Block{{Cause: reconcile.CausePaused, Detail: "p1"}}}}}
	r.term.recordBlocks(ctx, paused, failing, now)
	if !r.j.hasEvent("remediation_blocked", "paused,launch_backoff") {
		t.Fatalf("a pause during a failing launch streak was not recorded: %+v", r.j.events())
	}
}
