package agent

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/immutd/immutd/internal/backup"
	"github.com/immutd/immutd/internal/cluster"
	"github.com/immutd/immutd/internal/state"
)

// TestSnapshotRestoreSingleAgent is the single-agent procedure: save a
// snapshot over the API, stop the agent, restore the file into its data
// directory with the raft state gone, start it again. The instances are
// the recorded ones, and nothing is launched, terminated or adopted.
func TestSnapshotRestoreSingleAgent(t *testing.T) {
	ta := newAgent(t, agentOpts{})
	ta.waitLeader()
	ta.fleet("web", webFleet(2, "web:1"))
	waitFor(t, "2 healthy instances", func() bool { return ta.healthyCount("web") == 2 })

	if code, body := ta.call(http.MethodGet, "/v1/snapshot", "", false); code != http.StatusUnauthorized {
		t.Fatalf("snapshot without the token: %d %s", code, body)
	}
	code, body := ta.call(http.MethodGet, "/v1/snapshot", "", true)
	if code != http.StatusOK {
		t.Fatalf("snapshot: %d %s", code, body)
	}
	snap, err := backup.Read(strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if snap.Header.Node != ta.name || snap.Header.ImmutdVersion != Version || snap.Header.Term != ta.a.node.Term() || snap.Header.Index == 0 {
		t.Fatalf("header %+v", snap.Header)
	}
	recorded := map[string]bool{}
	for id, in := range snap.State.Instances {
		if in.Fleet == "web" {
			recorded[id] = true
		}
	}
	if len(recorded) != 2 || snap.State.Fleets["web"] == nil {
		t.Fatalf("snapshot records %v, fleets %v", recorded, snap.State.Fleets)
	}
	var savedSeq uint64
	for _, ev := range snap.State.Events {
		savedSeq = max(savedSeq, ev.Seq)
	}
	dataDir, adv := ta.a.cfg.DataDir, ta.a.node.LocalAddr()
	if err := ta.stop(); err != nil {
		t.Fatal(err)
	}
	// The raft state is lost; the provider's instances run on.
	if err := os.RemoveAll(filepath.Join(dataDir, "raft")); err != nil {
		t.Fatal(err)
	}
	if _, err := cluster.RestoreOffline(cluster.RestoreConfig{DataDir: dataDir, Advertise: adv, Body: snap.Body, Index: snap.Header.Index, Term: snap.Header.Term}); err != nil {
		t.Fatal(err)
	}
	ta.start()
	ta.waitLeader()
	waitFor(t, "the 2 recorded instances healthy", func() bool {
		f, ok := ta.fleetStatus("web")
		if !ok || ta.healthyCount("web") != 2 || len(f.Instances) != 2 {
			return false
		}
		for _, in := range f.Instances {
			if !recorded[in.ID] {
				return false
			}
		}
		return true
	})
	// Wait for a pass that started after the first one, then judge.
	waitFor(t, "the restored leader's first pass", func() bool {
		for _, ev := range ta.a.Events(context.Background(), savedSeq, "", 0) {
			if ev.Action == state.ActionLeaderReady {
				return true
			}
		}
		return false
	})
	first := lastPassOf(ta.a)
	waitFor(t, "another pass", func() bool { return lastPassOf(ta.a).After(first) })
	// The history is the snapshot's: it has the launches of before.
	launched := map[string]bool{}
	for _, ev := range ta.a.Events(context.Background(), 0, "web", 0) {
		if ev.Action == state.ActionLaunched && ev.Seq <= savedSeq {
			launched[ev.InstanceID] = true
		}
	}
	for id := range recorded {
		if !launched[id] {
			t.Errorf("the restored event log has no launch of %s", id)
		}
	}
	for _, ev := range ta.a.Events(context.Background(), savedSeq, "web", 0) {
		switch ev.Action {
		case state.ActionLaunchPlanned, state.ActionLaunched, state.ActionTerminatePlanned, state.ActionTerminated, state.ActionAdopted:
			t.Errorf("after the restore: %s %s (%s)", ev.Action, ev.InstanceID, ev.Reason)
		}
	}
}

// TestSnapshotThroughAFollower: a follower asked for a snapshot fetches
// the leader's over the cluster port.
func TestSnapshotThroughAFollower(t *testing.T) {
	agents := newCluster(t, 3)
	l, f := leaderOf(agents), followerOf(agents)
	code, body := f.call(http.MethodGet, "/v1/snapshot", "", true)
	if code != http.StatusOK {
		t.Fatalf("snapshot via a follower: %d %s", code, body)
	}
	snap, err := backup.Read(bytes.NewReader([]byte(body)))
	if err != nil {
		t.Fatal(err)
	}
	if snap.Header.Node != l.name {
		t.Fatalf("snapshot taken on %s, the leader is %s", snap.Header.Node, l.name)
	}
	// The cluster port answers only the leader's snapshot, and only to
	// members: a plain connection is refused by the mux.
	conn, err := net.Dial("tcp", f.a.node.LocalAddr())
	if err != nil {
		t.Fatal(err)
	}
	_ = conn.SetDeadline(time.Now().Add(time.Minute)) // only keeps a broken test from hanging
	fmt.Fprintf(conn, "GET /cluster/v1/snapshot HTTP/1.1\r\nHost: x\r\n\r\n")
	buf := make([]byte, 64)
	n, _ := conn.Read(buf)
	conn.Close()
	if bytes.Contains(buf[:n], []byte("200 OK")) {
		t.Fatalf("the cluster port served a snapshot to a stranger: %q", buf[:n])
	}
}

// lastPassOf is when the agent's leader term finished its last pass.
func lastPassOf(a *Agent) time.Time {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.lastPass
}
