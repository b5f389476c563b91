package e2e

import (
	"context"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/immutd/immutd/internal/backup"
	"github.com/immutd/immutd/internal/state"
)

// TestSnapshotSaveWipeRestoreCluster saves a snapshot of a three-agent
// cluster keeping a fleet of three, wipes the cluster (every agent
// stopped, every data directory deleted; the instances keep running, as
// they do across agent restarts), and brings it back by the documented
// procedure: restore the file into one agent's data directory, start it,
// start the others empty. The fleet is back with the same instance ids
// and the same processes, all healthy, and after the restore nothing of
// the fleet was planned, launched, terminated or adopted.
func TestSnapshotSaveWipeRestoreCluster(t *testing.T) {
	c := newCluster(t, 3, "")
	c.writeFleet("web.hcl", fleetFile("web", 3, "v1", ""))
	c.start()
	before := c.waitHealthy("web", 3)
	pids := map[string]int{}
	for _, in := range before.Instances {
		pids[in.ID] = localPID(t, in)
	}

	// Save through a follower: it fetches the snapshot from the leader.
	l := c.leader()
	follower := c.agents[(l+1)%3]
	dir := t.TempDir()
	file := filepath.Join(dir, "cluster.snap")
	if out, code := runCLI("snapshot", "save", file, "-addr", follower.httpAddr); code != 1 || !strings.Contains(out, "401") {
		t.Fatalf("save without the token: exit %d\n%s", code, out)
	}
	if _, err := os.Stat(file); !os.IsNotExist(err) {
		t.Fatalf("a refused save left %s", file)
	}
	out, code := follower.cli("snapshot", "save", file)
	if code != 0 {
		t.Fatalf("snapshot save: exit %d\n%s", code, out)
	}
	t.Logf("snapshot save:\n%s", out)
	if fi, err := os.Stat(file); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("snapshot file: %v %v", fi, err)
	}
	if out, code := follower.cli("snapshot", "save", file); code != 1 || !strings.Contains(out, "exists: pass -force") {
		t.Fatalf("save over the file: exit %d\n%s", code, out)
	}
	snap, err := backup.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if want := fmt.Sprintf("agent-%d", l+1); snap.Header.Node != want {
		t.Fatalf("snapshot taken on %q, not on the leader %s", snap.Header.Node, want)
	}
	if got := slices.Sorted(maps.Keys(snap.State.Instances)); !slices.Equal(got, slices.Sorted(maps.Keys(pids))) {
		t.Fatalf("snapshot records %v, running %v", got, pids)
	}
	var savedSeq uint64
	for _, ev := range snap.State.Events {
		savedSeq = max(savedSeq, ev.Seq)
	}

	// Wipe the cluster: the leader first, so that each stop hands
	// leadership to a live agent.
	c.agents[l].stop()
	for i, e := range c.agents {
		if i != l {
			e.stop()
		}
	}
	for _, e := range c.agents {
		must(t, os.RemoveAll(e.dataDir))
	}
	for id, pid := range pids {
		if err := syscall.Kill(pid, 0); err != nil {
			t.Fatalf("instance %s (pid %d) did not survive the agents: %v", id, pid, err)
		}
	}

	// Restore into the first agent and start it; the others start empty
	// and join it.
	out, code = runCLI("snapshot", "restore", file, "-config", c.agents[0].cfgPath)
	if code != 0 {
		t.Fatalf("snapshot restore: exit %d\n%s", code, out)
	}
	t.Logf("snapshot restore:\n%s", out)
	c.agents[0].launch()
	c.agents[0].waitReady(60 * time.Second)
	c.agents[1].launch()
	c.agents[2].launch()
	for _, e := range c.agents {
		e.waitReady(60 * time.Second)
	}
	c.agents[0].waitFor("all three agents to be voters again", 90*time.Second, func() (bool, string) {
		ms, err := c.agents[0].client.Members(context.Background())
		if err != nil {
			return false, err.Error()
		}
		voters := 0
		for _, m := range ms {
			if m.Suffrage == "voter" {
				voters++
			}
		}
		return len(ms) == 3 && voters == 3, fmt.Sprintf("%+v", ms)
	})
	after := c.waitHealthy("web", 3)
	for _, in := range after.Instances {
		want, ok := pids[in.ID]
		if !ok {
			t.Fatalf("instance %s after the restore was not there before: %s", in.ID, describe(after))
		}
		if got := localPID(t, in); got != want {
			t.Fatalf("instance %s runs as pid %d after the restore, %d before", in.ID, got, want)
		}
	}
	// The leader finished its first pass on the restored state, then a
	// few more, before the event log is judged.
	ld := c.agents[c.leader()]
	ld.waitEvent(savedSeq, 60*time.Second, func(ev state.Event) bool { return ev.Action == state.ActionLeaderReady })
	ld.waitPasses(3)
	for _, ev := range ld.eventsAfter(savedSeq) {
		switch ev.Action {
		case state.ActionLaunchPlanned, state.ActionLaunched, state.ActionTerminatePlanned, state.ActionTerminated, state.ActionAdopted:
			t.Errorf("after the restore: %s %s %s (%s)", ev.Action, ev.Fleet, ev.InstanceID, ev.Reason)
		}
	}
	// The history came back with the state: the launches of before.
	evs := ld.events()
	for id := range pids {
		if findEvent(evs, state.ActionLaunched, id) == nil {
			t.Errorf("the restored event log has no launch of %s", id)
		}
	}
	running := map[int]bool{}
	for _, pid := range processesUnder(c.localDir) {
		running[pid] = true
	}
	for id, pid := range pids {
		if !running[pid] {
			t.Errorf("instance %s (pid %d) no longer runs", id, pid)
		}
	}
	if len(running) != len(pids) {
		t.Errorf("%d instance processes run, want %d", len(running), len(pids))
	}
}
