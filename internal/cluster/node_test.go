package cluster

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"go.uber.org/zap/zaptest"

	"github.com/immutd/immutd/internal/state"
)

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func openSingle(t *testing.T, dir, addr string) *Node {
	t.Helper()
	n, err := Open(Config{DataDir: dir, BindAddr: addr, Bootstrap: true, Timing: ScaledTiming(1), Logger: zaptest.NewLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	waitLeader(t, n)
	return n
}

func waitLeader(t *testing.T, n *Node) {
	t.Helper()
	deadline := time.After(guard)
	for !n.IsLeader() {
		select {
		case <-deadline:
			t.Fatalf("no leadership within %s", guard)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func desired(gen uint64, size int) *state.SetDesired {
	return &state.SetDesired{BaseGeneration: gen, SourceHash: fmt.Sprint(size),
		Fleets: []*state.DesiredFleet{{Spec: state.FleetSpec{Name: "web", Size: size, Provider: "fake"}, ImageDigest: "d", TemplateHash: "t"}}}
}

func TestSingleNodeApplyPersistsAcrossRestart(t *testing.T) {
	dir, addr := t.TempDir(), freeAddr(t)
	n := openSingle(t, dir, addr)
	id := n.ID()
	ctx := context.Background()
	changed := n.Changes()
	res, err := n.Apply(ctx, desired(0, 3))
	if err != nil || res.Error() != nil || res.Generation != 1 {
		t.Fatalf("apply: %+v %v", res, err)
	}
	select {
	case <-changed:
	default:
		t.Fatal("Changes() not signalled after an apply")
	}
	if _, err := n.Apply(ctx, desired(1, 5)); err != nil {
		t.Fatal(err)
	}
	if err := n.Shutdown(); err != nil {
		t.Fatal(err)
	}

	n2 := openSingle(t, dir, addr)
	defer n2.Shutdown()
	if n2.ID() != id {
		t.Fatalf("node id changed across restart: %s -> %s", id, n2.ID())
	}
	if err := n2.Barrier(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	n2.Read(func(st *state.State) {
		if st.Generation != 2 || st.Fleets["web"].Spec.Size != 5 {
			t.Fatalf("state after restart: generation %d, fleet %+v", st.Generation, st.Fleets["web"])
		}
	})
	// The compare-and-set on the generation survives the restart too.
	res, err = n2.Apply(ctx, desired(1, 7))
	if err != nil || res.Error() == nil {
		t.Fatalf("stale generation accepted after restart: %+v %v", res, err)
	}
}

func TestSnapshotRestoreOnRestart(t *testing.T) {
	dir, addr := t.TempDir(), freeAddr(t)
	n := openSingle(t, dir, addr)
	ctx := context.Background()
	for i := 0; i < 20; i++ {
		if _, err := n.Apply(ctx, &state.RecordEvents{Events: []state.Event{{Action: "x", Reason: fmt.Sprint(i)}}}); err != nil {
			t.Fatal(err)
		}
	}
	if err := n.Snapshot(); err != nil {
		t.Fatal(err)
	}
	if _, err := n.Apply(ctx, desired(0, 2)); err != nil {
		t.Fatal(err)
	}
	n.Shutdown()
	snaps, _ := filepath.Glob(filepath.Join(dir, "raft", "snapshots", "*", "state.bin"))
	if len(snaps) == 0 {
		t.Fatal("no snapshot on disk")
	}
	n2 := openSingle(t, dir, addr)
	defer n2.Shutdown()
	if err := n2.Barrier(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	n2.Read(func(st *state.State) {
		if len(st.Events) != 21 || st.Generation != 1 {
			t.Fatalf("restored: %d events, generation %d", len(st.Events), st.Generation)
		}
	})
}

func TestNodeIDIsNeverEmptyOrRegenerated(t *testing.T) {
	dir := t.TempDir()
	a, err := nodeID(dir)
	if err != nil || len(a) != 32 {
		t.Fatalf("id %q %v", a, err)
	}
	b, _ := nodeID(dir)
	if a != b {
		t.Fatal("node id regenerated")
	}
	if err := os.WriteFile(filepath.Join(dir, "node-id"), []byte("\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := nodeID(dir); err == nil {
		t.Fatal("empty node-id accepted")
	}
}

func TestUnknownCommandStopsTheNode(t *testing.T) {
	f := newFSM(zaptest.NewLogger(t))
	defer func() {
		if recover() == nil {
			t.Fatal("an unknown non-ignorable command did not stop the FSM")
		}
	}()
	f.Apply(raftLog(1, []byte{77, 1, '{', '}'}))
}

func TestUnknownIgnorableCommandIsSkipped(t *testing.T) {
	f := newFSM(zaptest.NewLogger(t))
	f.Apply(raftLog(5, []byte{byte(state.Ignorable | 77), 1, '{', '}'}))
	if f.applied != 5 {
		t.Fatalf("applied index %d", f.applied)
	}
}

func raftLog(index uint64, data []byte) *raft.Log {
	return &raft.Log{Index: index, Term: 1, Type: raft.LogCommand, Data: data}
}
