package leader

import (
	"context"
	"errors"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/immutd/immutd/internal/reconcile"
	"github.com/immutd/immutd/internal/state"
	"github.com/immutd/immutd/internal/traffic"
)

// recBackend records admissions and syncs; syncErr fails every sync.
type recBackend struct {
	mu       sync.Mutex
	admitted []string
	synced   []traffic.Member
	kept     func(string) bool
	syncErr  error
}

func (b *recBackend) Name() string { return `fake "lb"` }
func (b *recBackend) Admit(_ context.Context, m traffic.Member) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.admitted = append(b.admitted, m.InstanceID)
	return nil
}
func (b *recBackend) Drain(context.Context, traffic.Member) error  { return nil }
func (b *recBackend) Remove(context.Context, traffic.Member) error { return nil }
func (b *recBackend) Connections(context.Context, traffic.Member) (int, bool, error) {
	return 0, true, nil
}
func (b *recBackend) Sync(_ context.Context, admitted []traffic.Member, keep func(string) bool) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.synced, b.kept = append([]traffic.Member(nil), admitted...), keep
	return b.syncErr
}
func (b *recBackend) Close() error { return nil }

type oneBackend struct{ b traffic.Backend }

func (o oneBackend) For(*state.DesiredFleet) ([]traffic.Backend, error) {
	return []traffic.Backend{o.b}, nil
}

func gatedSpec(name string, size int) state.FleetSpec {
	s := spec(name, size)
	s.Traffic = &state.TrafficSpec{MinReady: 2 * time.Second, DrainDelay: time.Second, KeepMin: 1, BackendTimeout: time.Minute,
		Files: []state.TrafficFile{{Name: "lb", Path: "/t.json"}}}
	return s
}

// stepAll runs a pass and waits for everything it started: provider
// calls, traffic steps and backend syncs.
func (r *rig) stepAll() {
	r.t.Helper()
	r.step()
	r.term.group.Wait()
}

func TestTrafficAdmitsAfterMinReadyAndSyncsVerdicts(t *testing.T) {
	b := &recBackend{}
	r := newRig(t)
	r.term = New(Config{Node: "n1", Journal: r.j, Providers: map[string]reconcile.Provider{"fake": r.p}, Judge: r.judge, Metrics: r.m,
		Log: zap.NewNop(), Now: r.clk.Now, Publish: func(s *Snapshot) { r.mu.Lock(); r.snaps = append(r.snaps, s); r.mu.Unlock() },
		Executor: reconcile.ExecutorOptions{Backoff: time.Millisecond}, Backends: oneBackend{b}})
	close(r.term.ready)
	r.commit(gatedSpec("web", 2))
	r.stepAll() // launch
	r.stepAll() // judged healthy: min_ready starts
	r.clk.advance(time.Second)
	r.stepAll()
	if len(b.admitted) != 0 {
		t.Fatalf("admitted %v after 1s of health, min_ready is 2s", b.admitted)
	}
	r.clk.advance(time.Second)
	r.stepAll() // admit
	r.stepAll() // sync with the admitted members
	sort.Strings(b.admitted)
	recs := r.records()
	if len(b.admitted) != 2 {
		t.Fatalf("admitted %v, want both instances", b.admitted)
	}
	for _, id := range b.admitted {
		if !recs[id].Admitted {
			t.Errorf("%s confirmed by the backend but not admitted in the state", id)
		}
	}
	if len(b.synced) != 2 || !b.synced[0].Healthy || !b.kept(b.admitted[0]) || b.kept("web-stranger") {
		t.Fatalf("sync with %+v", b.synced)
	}
	// The verdict reaches the backends (Consul's TTL check follows it).
	r.judge.set(b.admitted[0], reconcile.Unhealthy)
	r.stepAll()
	for _, m := range b.synced {
		if m.InstanceID == b.admitted[0] && m.Healthy {
			t.Fatalf("an unhealthy member synced as healthy: %+v", b.synced)
		}
	}

	// A failing sync shows in status as a blocked backend, and goes once
	// the backend is in sync again.
	r.judge.set(b.admitted[0], reconcile.Healthy)
	b.mu.Lock()
	b.syncErr = errors.New("dial unix /run/haproxy.sock: connection refused")
	b.mu.Unlock()
	r.stepAll()
	r.stepAll()
	if got := lastBlocks(r); !strings.Contains(got, `traffic_backend: fake "lb": dial unix /run/haproxy.sock`) {
		t.Fatalf("status blocks %q", got)
	}
	b.mu.Lock()
	b.syncErr = nil
	b.mu.Unlock()
	r.stepAll()
	r.stepAll()
	if got := lastBlocks(r); got != "" {
		t.Fatalf("status blocks %q after the backend recovered", got)
	}
}

func lastBlocks(r *rig) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, f := range r.snaps[len(r.snaps)-1].Fleets() {
		for _, b := range f.Blocked {
			out = append(out, b.Cause+": "+b.Detail)
		}
	}
	return strings.Join(out, "; ")
}
