package cluster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"go.uber.org/zap/zaptest"

	"github.com/immutd/immutd/internal/state"
)

// faultLayer is a loopback TCP stream layer that a test can cut off: while
// down, it dials nothing, refuses what it accepts, and it drops every
// connection it had when it went down.
type faultLayer struct {
	net.Listener
	advertise net.Addr
	down      atomic.Bool
	mu        sync.Mutex
	conns     []net.Conn
}

func newFaultLayer(t testing.TB) *faultLayer {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return &faultLayer{Listener: ln, advertise: ln.Addr()}
}

func (l *faultLayer) Addr() net.Addr { return l.advertise }

// track keeps c to close it at the next partition, or closes it now if
// the layer went down meanwhile: checking and adding under one lock, so
// that a connection made while partition runs cannot survive it (one
// did, and kept a partitioned leader's heartbeats flowing).
func (l *faultLayer) track(c net.Conn) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.down.Load() {
		c.Close()
		return false
	}
	l.conns = append(l.conns, c)
	return true
}

func (l *faultLayer) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if l.track(c) {
			return c, nil
		}
	}
}

func (l *faultLayer) Dial(addr raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	if l.down.Load() {
		return nil, errors.New("partitioned")
	}
	c, err := net.DialTimeout("tcp", string(addr), timeout)
	if err != nil {
		return nil, err
	}
	if !l.track(c) {
		return nil, errors.New("partitioned")
	}
	return c, nil
}

func (l *faultLayer) partition() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.down.Store(true)
	for _, c := range l.conns {
		c.Close()
	}
	l.conns = nil
}

func (l *faultLayer) heal() { l.down.Store(false) }

type testCluster struct {
	t      testing.TB
	nodes  []*Node
	layers []*faultLayer
}

func newTestCluster(t testing.TB, n int, tweak func(*Config)) *testCluster {
	t.Helper()
	tc := &testCluster{t: t}
	var servers []raft.Server
	for i := 0; i < n; i++ {
		l := newFaultLayer(t)
		// Raft at its default timing (multiplier 1), as agents run it: the
		// tests must hold on a loaded machine, so they wait on conditions
		// and never on raft being fast.
		cfg := Config{DataDir: t.TempDir(), Layer: l, Timing: ScaledTiming(1), Logger: zaptest.NewLogger(t).Named(fmt.Sprintf("n%d", i))}
		if tweak != nil {
			tweak(&cfg)
		}
		node, err := Open(cfg)
		if err != nil {
			t.Fatal(err)
		}
		tc.nodes = append(tc.nodes, node)
		tc.layers = append(tc.layers, l)
		servers = append(servers, raft.Server{ID: raft.ServerID(node.ID()), Address: raft.ServerAddress(node.LocalAddr()), Suffrage: raft.Voter})
	}
	for _, node := range tc.nodes {
		if err := node.BootstrapServers(servers); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		for _, node := range tc.nodes {
			node.Shutdown()
		}
	})
	return tc
}

// guard bounds every wait of these tests. It is no timing claim: at a
// load average of 10 raft still elects and replicates within seconds;
// the guard only keeps a broken test from hanging.
const guard = 60 * time.Second

// leader waits for exactly one leader among the nodes not excluded.
func (tc *testCluster) leader(exclude ...int) int {
	tc.t.Helper()
	deadline := time.Now().Add(guard)
	for time.Now().Before(deadline) {
		found := -1
		count := 0
		for i, n := range tc.nodes {
			if contains(exclude, i) {
				continue
			}
			if n.IsLeader() {
				found = i
				count++
			}
		}
		if count == 1 {
			return found
		}
		time.Sleep(20 * time.Millisecond)
	}
	tc.t.Fatalf("no single leader within %s", guard)
	return -1
}

// record commits test event i exactly once through whichever node leads
// (of those not excluded). An entry whose leader was lost in flight may
// or may not be committed: after a barrier on the next leader the event
// is looked for, and applied again only when it is not there.
func (tc *testCluster) record(i int, exclude ...int) {
	tc.t.Helper()
	deadline := time.Now().Add(guard)
	for {
		l := tc.leader(exclude...)
		_, err := tc.nodes[l].Apply(context.Background(), event(i))
		if err == nil {
			return
		}
		if !errors.Is(err, ErrMaybeApplied) && !errors.Is(err, ErrNotLeader) {
			tc.t.Fatalf("apply event %d: %v", i, err)
		}
		if time.Now().After(deadline) {
			tc.t.Fatalf("event %d not committed within %s: %v", i, guard, err)
		}
		l = tc.leader(exclude...)
		if err := tc.nodes[l].Barrier(guard); err != nil {
			continue
		}
		found := false
		tc.nodes[l].Read(func(st *state.State) {
			for _, e := range st.Events {
				found = found || e.Action == "test" && e.Reason == fmt.Sprint(i)
			}
		})
		if found {
			return
		}
	}
}

func contains(xs []int, x int) bool {
	for _, y := range xs {
		if x == y {
			return true
		}
	}
	return false
}

func event(i int) *state.RecordEvents {
	return &state.RecordEvents{Events: []state.Event{{Action: "test", Reason: fmt.Sprint(i)}}}
}

func (tc *testCluster) waitEvents(i, n int) {
	tc.t.Helper()
	deadline := time.Now().Add(guard)
	for {
		got := 0
		tc.nodes[i].Read(func(st *state.State) { got = len(st.Events) })
		if got == n {
			return
		}
		if time.Now().After(deadline) {
			tc.t.Fatalf("node %d has %d events, want %d", i, got, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestClusterElectsAndReplicates(t *testing.T) {
	tc := newTestCluster(t, 3, nil)
	for i := 0; i < 5; i++ {
		tc.record(i)
	}
	for i := range tc.nodes {
		tc.waitEvents(i, 5)
	}
	l := tc.leader()
	f := (l + 1) % 3
	if _, err := tc.nodes[f].Apply(context.Background(), event(9)); !errors.Is(err, ErrNotLeader) && !tc.nodes[f].IsLeader() {
		t.Fatalf("apply on a follower: %v, want ErrNotLeader", err)
	}
	if v := tc.nodes[f].Voters(); v != 3 {
		t.Fatalf("voters %d", v)
	}
}

func TestPartitionedLeaderIsReplacedAndCatchesUp(t *testing.T) {
	tc := newTestCluster(t, 3, nil)
	tc.record(0)
	old := tc.leader()
	tc.layers[old].partition()
	tc.leader(old)
	// The cut-off leader steps down within its lease and cannot commit.
	deadline := time.Now().Add(guard)
	for tc.nodes[old].IsLeader() {
		if time.Now().After(deadline) {
			t.Fatal("partitioned leader did not step down")
		}
		time.Sleep(10 * time.Millisecond)
	}
	cctx, cancel := context.WithTimeout(context.Background(), time.Second)
	if _, err := tc.nodes[old].Apply(cctx, event(99)); err == nil {
		t.Fatal("a partitioned node committed an entry")
	}
	cancel()
	for i := 1; i <= 3; i++ {
		tc.record(i, old)
	}
	tc.layers[old].heal()
	tc.waitEvents(old, 4)
	var last string
	tc.nodes[old].Read(func(st *state.State) { last = st.Events[len(st.Events)-1].Reason })
	if last != "3" {
		t.Fatalf("healed node's last event %q, want the new leader's", last)
	}
}

func TestMinorityMakesNoProgress(t *testing.T) {
	tc := newTestCluster(t, 3, nil)
	l := tc.leader()
	a, b := (l+1)%3, (l+2)%3
	tc.layers[a].partition()
	tc.layers[b].partition()
	// The leader has lost its quorum: it steps down, and no node leads.
	deadline := time.Now().Add(guard)
	for tc.nodes[l].IsLeader() {
		if time.Now().After(deadline) {
			t.Fatal("leader without quorum did not step down")
		}
		time.Sleep(10 * time.Millisecond)
	}
	// Watch for 3s (15 election timeouts at multiplier 1) that no node
	// wins an election. Under load the nodes campaign less often in that
	// time, so the check is weaker then, never wrong.
	for watch := time.Now().Add(3 * time.Second); time.Now().Before(watch); time.Sleep(10 * time.Millisecond) {
		for i, n := range tc.nodes {
			if n.IsLeader() {
				t.Fatalf("node %d leads without a quorum", i)
			}
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	if _, err := tc.nodes[l].Apply(ctx, event(1)); err == nil {
		t.Fatal("committed without quorum")
	}
	tc.layers[a].heal()
	tc.layers[b].heal()
	tc.leader()
}

func TestSnapshotInstallOnLaggingFollower(t *testing.T) {
	tc := newTestCluster(t, 3, func(c *Config) { c.TrailingLogs = 5; c.SnapshotThreshold = 10 })
	lag := (tc.leader() + 1) % 3
	tc.layers[lag].partition()
	for i := 0; i < 60; i++ {
		tc.record(i, lag)
	}
	// Compact both others' logs past what the follower has, so whichever
	// leads when it comes back must send a snapshot.
	for i := range tc.nodes {
		if i == lag {
			continue
		}
		if err := tc.nodes[i].Snapshot(); err != nil {
			t.Fatalf("snapshot of node %d: %v", i, err)
		}
	}
	tc.layers[lag].heal()
	tc.waitEvents(lag, 60)
	tc.nodes[lag].fsm.mu.RLock()
	restores := tc.nodes[lag].fsm.restores
	tc.nodes[lag].fsm.mu.RUnlock()
	if restores == 0 {
		t.Fatal("the lagging follower caught up without installing a snapshot; the test did not exercise InstallSnapshot")
	}
}
