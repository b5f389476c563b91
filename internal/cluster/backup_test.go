package cluster

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/immutd/immutd/internal/state"
)

// TestEncodeStateThenRestoreOffline takes a state off a leader, restores
// it into an empty data directory and opens a node there: it leads alone,
// holds the same state, and is in a term later than any the state
// records, so that it can claim the open intents.
func TestEncodeStateThenRestoreOffline(t *testing.T) {
	dir, addr := t.TempDir(), freeAddr(t)
	n := openSingle(t, dir, addr)
	ctx := context.Background()
	if _, err := n.Apply(ctx, desired(0, 3)); err != nil {
		t.Fatal(err)
	}
	// An intent owned by a term far beyond this node's: the state of a
	// cluster that saw many elections.
	const oldTerm = 50
	res, err := n.Apply(ctx, &state.CommitIntents{Generation: 1, At: time.Unix(5, 0), Intents: []*state.Intent{{OpID: "op-1", Kind: state.Launch,
		Fleet: "web", InstanceID: "i-1", Reason: "scale_up", Term: oldTerm, Generation: 1, ImageDigest: "d", TemplateHash: "t"}}})
	if err != nil || len(res.Accepted) != 1 {
		t.Fatalf("commit intent: %+v %v", res, err)
	}
	body, index, term, err := n.EncodeState(guard)
	if err != nil {
		t.Fatal(err)
	}
	if index < n.AppliedIndex() || index == 0 || term != n.Term() {
		t.Fatalf("encoded at index %d term %d; node applied %d, term %d", index, term, n.AppliedIndex(), n.Term())
	}

	// A running agent's data directory is never written.
	if _, err := RestoreOffline(RestoreConfig{DataDir: dir, Advertise: addr, Body: body, Index: index, Term: term, Replace: true}); err == nil ||
		!strings.Contains(err.Error(), "an agent is running on this data directory") {
		t.Fatalf("restore into a running node's directory: %v", err)
	}
	if err := n.Shutdown(); err != nil {
		t.Fatal(err)
	}
	// A stopped one with state only with Replace, which keeps the old state.
	if _, err := RestoreOffline(RestoreConfig{DataDir: dir, Advertise: addr, Body: body, Index: index, Term: term}); !errors.Is(err, ErrHasState) ||
		!strings.Contains(err.Error(), "pass -force") {
		t.Fatalf("restore over state: %v", err)
	}
	r, err := RestoreOffline(RestoreConfig{DataDir: dir, Advertise: addr, Body: body, Index: index, Term: term, Replace: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(r.MovedAside, "raft.db")); err != nil || !strings.HasPrefix(filepath.Base(r.MovedAside), "raft.before-restore-") {
		t.Fatalf("old state not moved aside to %q: %v", r.MovedAside, err)
	}

	// An empty data directory: the node is a one-server cluster at once.
	dir2, addr2 := t.TempDir(), freeAddr(t)
	r2, err := RestoreOffline(RestoreConfig{DataDir: dir2, Advertise: addr2, Body: body, Index: index, Term: term})
	if err != nil {
		t.Fatal(err)
	}
	if r2.MovedAside != "" || r2.Term != oldTerm || r2.Index != index {
		t.Fatalf("restore result %+v", r2)
	}
	n2, err := Open(Config{DataDir: dir2, BindAddr: addr2, Timing: ScaledTiming(1), Logger: zaptest.NewLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer n2.Shutdown()
	if !n2.HadState() || n2.ID() != r2.NodeID {
		t.Fatalf("restored node: had state %v, id %s (restored as %s)", n2.HadState(), n2.ID(), r2.NodeID)
	}
	waitLeader(t, n2)
	if n2.Term() <= oldTerm {
		t.Fatalf("restored node leads in term %d, not after the state's term %d", n2.Term(), oldTerm)
	}
	servers, err := n2.Servers()
	if err != nil || len(servers) != 1 || string(servers[0].ID) != r2.NodeID || string(servers[0].Address) != addr2 {
		t.Fatalf("servers %+v %v", servers, err)
	}
	n2.Read(func(st *state.State) {
		if st.Generation != 1 || st.Fleets["web"] == nil || st.Intents["op-1"] == nil {
			t.Errorf("restored state: generation %d, fleets %v, intents %v", st.Generation, st.Fleets, st.Intents)
		}
	})
	res, err = n2.Apply(ctx, &state.ClaimIntents{OpIDs: []string{"op-1"}, Term: n2.Term(), At: time.Unix(6, 0)})
	if err != nil || len(res.Accepted) != 1 {
		t.Fatalf("the restored leader cannot claim the open intent: %+v %v", res, err)
	}
	// It survives a restart like any node.
	if err := n2.Shutdown(); err != nil {
		t.Fatal(err)
	}
	n3, err := Open(Config{DataDir: dir2, BindAddr: addr2, Timing: ScaledTiming(1), Logger: zaptest.NewLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer n3.Shutdown()
	waitLeader(t, n3)
	// The log after the snapshot is applied again after the restart, not
	// necessarily by the time the node leads: wait for the claim.
	deadline := time.Now().Add(30 * time.Second)
	for {
		claimed := false
		var got string
		n3.Read(func(st *state.State) {
			claimed = st.Intents["op-1"] != nil && st.Intents["op-1"].Term > oldTerm
			got = fmt.Sprintf("%+v", st.Intents)
		})
		if claimed {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after a restart the claim of op-1 is not applied: intents %s", got)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestEncodeStateOnFollowerAndBadRestores(t *testing.T) {
	// A node that neither bootstrapped nor joined leads nothing.
	n, err := Open(Config{DataDir: t.TempDir(), BindAddr: freeAddr(t), Timing: ScaledTiming(1), Logger: zaptest.NewLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Shutdown()
	if _, _, _, err := n.EncodeState(time.Second); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("encode on a follower: %v", err)
	}
	// A body that does not decode writes nothing.
	dir := t.TempDir()
	if _, err := RestoreOffline(RestoreConfig{DataDir: dir, Advertise: "127.0.0.1:1", Body: []byte("{\"format\":1}\n{\"fleets\":7}\n"), Term: 1}); err == nil {
		t.Fatal("restored a state that does not decode")
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Fatalf("a failed restore left %v", ents)
	}
}
