package reconcile

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/immutd/immutd/internal/instance"
	"github.com/immutd/immutd/internal/state"
)

// memJournal applies commands to a real state.State, as the raft FSM
// would, without raft.
type memJournal struct {
	mu     sync.Mutex
	st     *state.State
	term   uint64
	leader error
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
	return j.st.Apply(d), nil
}
func (j *memJournal) Term() uint64        { return j.term }
func (j *memJournal) VerifyLeader() error { return j.leader }

func (j *memJournal) read(fn func(*state.State)) {
	j.mu.Lock()
	defer j.mu.Unlock()
	fn(j.st)
}

// fakeProvider records calls; launchErr makes every launch fail.
type fakeProvider struct {
	mu         sync.Mutex
	launched   []string
	terminated []string
	launchErr  error
}

func (p *fakeProvider) List(context.Context) ([]instance.Observed, error) { return nil, nil }
func (p *fakeProvider) Launch(_ context.Context, r instance.LaunchRequest) (instance.Observed, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.launched = append(p.launched, r.InstanceID)
	if p.launchErr != nil {
		return instance.Observed{}, p.launchErr
	}
	return instance.Observed{ID: r.InstanceID, Fleet: r.Fleet, ImageDigest: r.ImageDigest, Address: "127.0.0.1:1", Phase: instance.Running}, nil
}
func (p *fakeProvider) Terminate(_ context.Context, id string, _ time.Duration) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.terminated = append(p.terminated, id)
	return nil
}

func newExec(t *testing.T, leader error) (*Executor, *memJournal, *fakeProvider) {
	t.Helper()
	j := &memJournal{st: state.New(), term: 3, leader: leader}
	d := desired(3)
	if _, err := j.Apply(context.Background(), &state.SetDesired{Fleets: []*state.DesiredFleet{d}, At: t0}); err != nil {
		t.Fatal(err)
	}
	p := &fakeProvider{}
	e := NewExecutor(ExecutorOptions{Journal: j, Providers: map[string]Provider{"fake": p}, Node: "n1", Backoff: time.Millisecond})
	return e, j, p
}

func fleetsOf(j *memJournal) map[string]*state.DesiredFleet {
	var out map[string]*state.DesiredFleet
	j.read(func(st *state.State) { out = map[string]*state.DesiredFleet{"web": st.Fleets["web"]} })
	return out
}

func TestExecutorJournalsThenCalls(t *testing.T) {
	e, j, p := newExec(t, nil)
	plan := Result{Actions: []Action{{Kind: ActLaunch, Fleet: "web", Reason: ReasonScaleUp}, {Kind: ActLaunch, Fleet: "web", Reason: ReasonScaleUp}}}
	started, err := e.Apply(context.Background(), 1, plan, fleetsOf(j), nil, nil)
	if err != nil || len(started) != 2 {
		t.Fatalf("apply: %v, %d started", err, len(started))
	}
	e.Wait()
	j.read(func(st *state.State) {
		if len(st.Instances) != 2 || len(st.Intents) != 0 {
			t.Fatalf("after launches: %d records, %d open intents", len(st.Instances), len(st.Intents))
		}
		for _, id := range p.launched {
			if st.Instances[id] == nil || st.Instances[id].LaunchOp == "" {
				t.Fatalf("launched %s without a record made from its intent", id)
			}
		}
	})
	// A plan made for an older generation is refused whole.
	if _, err := e.Apply(context.Background(), 0, plan, fleetsOf(j), nil, nil); err == nil {
		t.Fatal("a stale plan was applied")
	}
	if len(p.launched) != 2 {
		t.Fatalf("provider launches %v", p.launched)
	}
}

func TestExecutorDoesNotKillWithoutConfirmedLeadership(t *testing.T) {
	e, j, p := newExec(t, errors.New("leadership lost"))
	plan := Result{Actions: []Action{{Kind: ActTerminate, Fleet: "web", InstanceID: "web-x", Reason: ReasonUnhealthy, Evidence: []string{"e"}}}}
	if _, err := e.Apply(context.Background(), 1, plan, fleetsOf(j), nil, nil); err != nil {
		t.Fatal(err)
	}
	e.Wait()
	if len(p.terminated) != 0 {
		t.Fatalf("terminated %v without confirmed leadership", p.terminated)
	}
	j.read(func(st *state.State) {
		if len(st.Intents) != 1 {
			t.Fatalf("the intent must stay open for the next leader, got %d", len(st.Intents))
		}
	})
}

func TestExecutorDoesNotRetryAPermanentError(t *testing.T) {
	e, j, p := newExec(t, nil)
	p.launchErr = fmt.Errorf("launch: %w", instance.Permanent(errors.New("image is not in the store")))
	plan := Result{Actions: []Action{{Kind: ActLaunch, Fleet: "web", Reason: ReasonScaleUp}}}
	if _, err := e.Apply(context.Background(), 1, plan, fleetsOf(j), nil, nil); err != nil {
		t.Fatal(err)
	}
	e.Wait()
	if len(p.launched) != 1 || len(p.terminated) != 1 {
		t.Fatalf("a permanent error: %d launch calls (want 1), %d cleanups (want 1)", len(p.launched), len(p.terminated))
	}
	j.read(func(st *state.State) {
		if len(st.Intents) != 0 || st.Stats["web"].LaunchFailures != 1 {
			t.Fatalf("after a permanent failure: %d open intents, %d launch failures", len(st.Intents), st.Stats["web"].LaunchFailures)
		}
	})
}

func TestExecutorFailedLaunchCleansUpAndCounts(t *testing.T) {
	e, j, p := newExec(t, nil)
	p.launchErr = errors.New("exec format error")
	plan := Result{Actions: []Action{{Kind: ActLaunch, Fleet: "web", Reason: ReasonScaleUp}}}
	if _, err := e.Apply(context.Background(), 1, plan, fleetsOf(j), nil, nil); err != nil {
		t.Fatal(err)
	}
	e.Wait()
	if len(p.launched) != 3 || len(p.terminated) != 1 || p.terminated[0] != p.launched[0] {
		t.Fatalf("want 3 tries and one cleanup of the same id, got launched %v terminated %v", p.launched, p.terminated)
	}
	j.read(func(st *state.State) {
		if len(st.Intents) != 0 || len(st.Instances) != 0 || st.Stats["web"].LaunchFailures != 1 {
			t.Fatalf("intents %d records %d stats %+v", len(st.Intents), len(st.Instances), st.Stats["web"])
		}
	})
}

// TestExecutorResume: a new leader finishes what the last one left open.
func TestExecutorResume(t *testing.T) {
	e, j, p := newExec(t, nil)
	ctx := context.Background()
	fl := fleetsOf(j)["web"]
	open := []*state.Intent{
		{OpID: "found", Kind: state.Launch, Fleet: "web", InstanceID: "web-found", Term: 2, Generation: fl.Generation, ImageDigest: fl.ImageDigest, TemplateHash: fl.TemplateHash},
		{OpID: "redo", Kind: state.Launch, Fleet: "web", InstanceID: "web-redo", Term: 2, Generation: fl.Generation, ImageDigest: fl.ImageDigest, TemplateHash: fl.TemplateHash},
		{OpID: "stale", Kind: state.Launch, Fleet: "web", InstanceID: "web-stale", Term: 2, Generation: fl.Generation, ImageDigest: "sha256:older", TemplateHash: fl.TemplateHash},
		{OpID: "kill", Kind: state.Terminate, Fleet: "web", InstanceID: "web-old", Term: 2, Reason: string(ReasonDriftImage)},
		// The agent died during this launch: its instance exists but never ran.
		{OpID: "cut", Kind: state.Launch, Fleet: "web", InstanceID: "web-cut", Term: 2, Generation: fl.Generation, ImageDigest: fl.ImageDigest, TemplateHash: fl.TemplateHash},
	}
	if _, err := j.Apply(ctx, &state.CommitIntents{Generation: 1, Intents: open, At: t0}); err != nil {
		t.Fatal(err)
	}
	var intents []*state.Intent
	j.read(func(st *state.State) { intents = st.SortedIntents() })
	observed := map[string]instance.Observed{"web-found": {ID: "web-found", Fleet: "web", Phase: instance.Running},
		"web-cut": {ID: "web-cut", Fleet: "web", Phase: instance.Exited, ExitReason: "launch interrupted before the process was recorded"}}
	n, err := e.Resume(ctx, intents, fleetsOf(j), observed)
	if err != nil || n != 5 {
		t.Fatalf("resume: %d, %v", n, err)
	}
	e.Wait()
	if len(p.launched) != 1 || p.launched[0] != "web-redo" {
		t.Fatalf("relaunched %v, want only web-redo (with its journaled id)", p.launched)
	}
	if len(p.terminated) != 1 || p.terminated[0] != "web-old" {
		t.Fatalf("terminated %v", p.terminated)
	}
	j.read(func(st *state.State) {
		if len(st.Intents) != 0 {
			t.Fatalf("%d intents still open", len(st.Intents))
		}
		if st.Instances["web-found"] == nil || st.Instances["web-redo"] == nil || st.Instances["web-stale"] != nil || st.Instances["web-cut"] != nil {
			t.Fatalf("records after resume: %v", st.Instances)
		}
		if st.Finished["abandoned"] != 2 {
			t.Fatalf("finished %v", st.Finished)
		}
		if s := st.Stats["web"]; s != nil && s.LaunchFailures != 0 {
			t.Fatalf("an interrupted launch counted as a launch failure: %+v", s)
		}
	})
	// Resuming again finds nothing to take over.
	if n, err := e.Resume(ctx, nil, fleetsOf(j), nil); n != 0 || err != nil {
		t.Fatalf("second resume: %d %v", n, err)
	}
}
