package reconcile

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/immutd/immutd/internal/instance"
	"github.com/immutd/immutd/internal/state"
	"github.com/immutd/immutd/internal/traffic"
)

// fakeBackend records the calls it gets. conns answers Connections; fail,
// when set, fails every call with it.
type fakeBackend struct {
	mu    sync.Mutex
	calls []string
	conns func() (int, bool)
	fail  error
}

func (b *fakeBackend) Name() string { return `fake "lb"` }
func (b *fakeBackend) record(call string, m traffic.Member) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.calls = append(b.calls, call+" "+m.InstanceID+" "+m.Address)
	return b.fail
}
func (b *fakeBackend) Admit(_ context.Context, m traffic.Member) error  { return b.record("admit", m) }
func (b *fakeBackend) Drain(_ context.Context, m traffic.Member) error  { return b.record("drain", m) }
func (b *fakeBackend) Remove(_ context.Context, m traffic.Member) error { return b.record("remove", m) }
func (b *fakeBackend) Connections(context.Context, traffic.Member) (int, bool, error) {
	if b.conns == nil {
		return 0, false, nil
	}
	n, known := b.conns()
	return n, known, nil
}
func (b *fakeBackend) Sync(context.Context, []traffic.Member, func(string) bool) error { return nil }
func (b *fakeBackend) Close() error                                                    { return nil }
func (b *fakeBackend) log() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return strings.Join(b.calls, ", ")
}

type fakeBackends struct{ bs []traffic.Backend }

func (f fakeBackends) For(*state.DesiredFleet) ([]traffic.Backend, error) { return f.bs, nil }

// clock is a test clock that tests move by hand.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// gatedExec is an executor over a fleet with a traffic gate and one
// recorded, running instance web-1.
func gatedExec(t *testing.T, b *fakeBackend, c *clock, tr state.TrafficSpec) (*Executor, *memJournal, *fakeProvider) {
	t.Helper()
	j := &memJournal{st: state.New(), term: 3}
	d := desired(1)
	tr.Files = []state.TrafficFile{{Name: "t", Path: "/t.json"}}
	d.Spec.Traffic = &tr
	ctx := context.Background()
	if _, err := j.Apply(ctx, &state.SetDesired{Fleets: []*state.DesiredFleet{d}, At: t0}); err != nil {
		t.Fatal(err)
	}
	if _, err := j.Apply(ctx, &state.Adopt{Instances: []*state.Instance{{ID: "web-1", Fleet: "web", ImageDigest: imgNew, Address: "127.0.0.1:9001"}}, At: t0}); err != nil {
		t.Fatal(err)
	}
	p := &fakeProvider{}
	e := NewExecutor(ExecutorOptions{Journal: j, Providers: map[string]Provider{"fake": p}, Node: "n1", Backoff: time.Millisecond,
		Backends: fakeBackends{[]traffic.Backend{b}}, Now: c.Now})
	return e, j, p
}

func observedWeb1() map[string]instance.Observed {
	return map[string]instance.Observed{"web-1": {ID: "web-1", Fleet: "web", ImageDigest: imgNew, Address: "127.0.0.1:9001", Phase: instance.Running}}
}

func recordsOf(j *memJournal) map[string]*state.Instance {
	out := map[string]*state.Instance{}
	j.read(func(st *state.State) {
		for id, r := range st.Instances {
			cp := *r
			out[id] = &cp
		}
	})
	return out
}

func apply(t *testing.T, e *Executor, j *memJournal, acts ...Action) {
	t.Helper()
	var gen uint64
	j.read(func(st *state.State) { gen = st.Generation })
	started, err := e.Apply(context.Background(), gen, Result{Actions: acts}, fleetsOf(j), observedWeb1(), recordsOf(j))
	if err != nil || len(started) != len(acts) {
		t.Fatalf("apply %v: %v, %d started", brief(acts), err, len(started))
	}
	e.Wait()
}

func TestAdmitDrainThenTerminate(t *testing.T) {
	var conns atomic.Int32
	conns.Store(2)
	b := &fakeBackend{conns: func() (int, bool) { return int(conns.Add(-1)) + 1, true }}
	c := &clock{now: t0}
	// A drain_delay of an hour: the drain can only end because the
	// backend reported no connections left.
	e, j, p := gatedExec(t, b, c, state.TrafficSpec{DrainDelay: time.Hour, KeepMin: 1, BackendTimeout: time.Minute})

	apply(t, e, j, Action{Kind: ActAdmit, Fleet: "web", InstanceID: "web-1", Reason: ReasonReady})
	if r := recordsOf(j)["web-1"]; !r.Admitted {
		t.Fatalf("not admitted: %+v (backend: %s)", r, b.log())
	}
	apply(t, e, j, Action{Kind: ActDrain, Fleet: "web", InstanceID: "web-1", Reason: ReasonDriftImage, Running: true})
	if r := recordsOf(j)["web-1"]; r.Admitted || !r.Drained {
		t.Fatalf("not drained: %+v (backend: %s)", r, b.log())
	}
	if len(p.terminated) != 0 {
		t.Fatalf("a drain terminated %v", p.terminated)
	}
	apply(t, e, j, Action{Kind: ActTerminate, Fleet: "web", InstanceID: "web-1", Reason: ReasonDriftImage, Running: true})
	want := "admit web-1 127.0.0.1:9001, drain web-1 127.0.0.1:9001, remove web-1 127.0.0.1:9001, drain web-1 127.0.0.1:9001, remove web-1 127.0.0.1:9001"
	if got := b.log(); got != want {
		t.Fatalf("backend calls:\n%s\nwant\n%s", got, want)
	}
	if fmt.Sprint(p.terminated) != "[web-1]" {
		t.Fatalf("terminated %v", p.terminated)
	}
}

// A leader that takes over a drain whose removal was journaled repeats
// neither the removal nor the wait that already passed.
func TestResumedDrainKeepsItsJournaledDelay(t *testing.T) {
	b := &fakeBackend{} // cannot count connections: only drain_delay ends the wait
	c := &clock{now: t0}
	e, j, _ := gatedExec(t, b, c, state.TrafficSpec{DrainDelay: 30 * time.Second, BackendTimeout: time.Minute})
	apply(t, e, j, Action{Kind: ActAdmit, Fleet: "web", InstanceID: "web-1", Reason: ReasonReady})
	ctx := context.Background()
	// The old leader committed the drain and journaled the removal, then died.
	if _, err := j.Apply(ctx, &state.CommitIntents{Generation: 1, At: t0, Intents: []*state.Intent{{OpID: "dr", Kind: state.Drain, Fleet: "web",
		InstanceID: "web-1", Reason: "drift_image", Term: 2}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := j.Apply(ctx, &state.DrainRemoved{OpID: "dr", Term: 2, At: t0}); err != nil {
		t.Fatal(err)
	}
	c.add(31 * time.Second) // the delay is over by the time the new leader resumes
	var open []*state.Intent
	j.read(func(st *state.State) { open = st.SortedIntents() })
	before := b.log()
	if n, err := e.Resume(ctx, open, fleetsOf(j), observedWeb1()); n != 1 || err != nil {
		t.Fatalf("resume: %d %v", n, err)
	}
	e.Wait()
	if got := strings.TrimPrefix(b.log(), before+", "); got != "remove web-1 " {
		t.Fatalf("the resumed drain called %q; want only the removal", got)
	}
	if r := recordsOf(j)["web-1"]; !r.Drained {
		t.Fatalf("not drained: %+v", r)
	}
}

// An unreachable backend blocks the terminate: the instance is not
// killed, and the intent fails naming the backend.
func TestUnreachableBackendBlocksTheTerminate(t *testing.T) {
	b := &fakeBackend{fail: fmt.Errorf("dial unix /run/haproxy.sock: connection refused: %w", traffic.ErrUnreachable)}
	c := &clock{now: t0}
	e, j, p := gatedExec(t, b, c, state.TrafficSpec{BackendTimeout: time.Second})
	go func() { // the backend stays down past backend_timeout
		for range 200 {
			time.Sleep(10 * time.Millisecond)
			c.add(100 * time.Millisecond)
		}
	}()
	apply(t, e, j, Action{Kind: ActTerminate, Fleet: "web", InstanceID: "web-1", Reason: ReasonDriftImage, Running: true})
	if len(p.terminated) != 0 {
		t.Fatalf("terminated %v through an unreachable backend", p.terminated)
	}
	var ev state.Event
	j.read(func(st *state.State) { ev = st.Events[len(st.Events)-1] })
	if ev.Action != state.ActionTerminateFailed || !strings.Contains(strings.Join(ev.Evidence, " "), `fake "lb": dial unix /run/haproxy.sock`) {
		t.Fatalf("last event %+v", ev)
	}
}

// failFor is a backend that refuses admissions.
type failFor struct {
	*fakeBackend
}

func (b failFor) Admit(_ context.Context, m traffic.Member) error {
	_ = b.record("admit", m)
	return fmt.Errorf("refused")
}

// An admission one backend refuses leaves the instance in no backend:
// those that confirmed it take it back.
func TestRefusedAdmissionIsTakenBack(t *testing.T) {
	ok, refusing := &fakeBackend{}, failFor{&fakeBackend{}}
	c := &clock{now: t0}
	e, j, _ := gatedExec(t, ok, c, state.TrafficSpec{BackendTimeout: time.Second})
	e.backends = fakeBackends{[]traffic.Backend{ok, refusing}}
	go func() {
		for range 200 {
			time.Sleep(10 * time.Millisecond)
			c.add(100 * time.Millisecond)
		}
	}()
	apply(t, e, j, Action{Kind: ActAdmit, Fleet: "web", InstanceID: "web-1", Reason: ReasonReady})
	if r := recordsOf(j)["web-1"]; r.Admitted {
		t.Fatalf("admitted although a backend refused: %+v", r)
	}
	if got := ok.log(); !strings.HasPrefix(got, "admit web-1 127.0.0.1:9001") || !strings.HasSuffix(got, "drain web-1 127.0.0.1:9001") {
		t.Fatalf("the backend that confirmed was not taken back: %s", got)
	}
}

func TestClipKeepsCharactersWhole(t *testing.T) {
	if got := clip("ab€cd", 3); got != "ab…" {
		t.Fatalf("clip = %q", got)
	}
	if got := clip("abc", 3); got != "abc" {
		t.Fatalf("clip = %q", got)
	}
}

// A backend that refuses a member for good (a bad address) fails the step
// at once instead of retrying until backend_timeout.
func TestPermanentBackendErrorIsNotRetried(t *testing.T) {
	b := &fakeBackend{fail: instance.Permanent(fmt.Errorf("address \"x\": must be host:port"))}
	c := &clock{now: t0}
	e, j, p := gatedExec(t, b, c, state.TrafficSpec{BackendTimeout: time.Hour})
	apply(t, e, j, Action{Kind: ActTerminate, Fleet: "web", InstanceID: "web-1", Reason: ReasonDriftImage, Running: true})
	if len(p.terminated) != 0 {
		t.Fatalf("terminated %v", p.terminated)
	}
	if got := b.log(); got != "drain web-1 127.0.0.1:9001" {
		t.Fatalf("backend calls %q: a permanent refusal was retried", got)
	}
}
