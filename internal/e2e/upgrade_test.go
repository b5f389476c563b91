package e2e

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// previousReleases are the releases an upgrade is tested from: dbf9177,
// the last before the replicated state got types of its own (see
// internal/state/testdata/release-dbf9177), 7362f3f, the last before
// the traffic gate, and a428dde, the last before the remediation guards
// (kill rates, storms, pauses).
var previousReleases = []string{"dbf9177", "7362f3f", "a428dde"}

// buildRelease builds the immutd binary of an earlier commit of this
// repository from its git history, into the test's temporary directory.
func buildRelease(t *testing.T, commit string) string {
	t.Helper()
	if out, err := exec.Command("git", "-C", repoRoot, "cat-file", "-e", commit+"^{commit}").CombinedOutput(); err != nil {
		t.Fatalf("commit %s is not in this clone's history (a shallow clone? fetch it with git fetch --unshallow): %v %s", commit, err, out)
	}
	src := t.TempDir()
	archive := exec.Command("sh", "-c", fmt.Sprintf("git -C %q archive %s | tar -x -C %q", repoRoot, commit, src))
	if out, err := archive.CombinedOutput(); err != nil {
		t.Fatalf("git archive %s: %v\n%s", commit, err, out)
	}
	bin := filepath.Join(t.TempDir(), "immutd-"+commit)
	if err := goBuild(src, bin, "-X github.com/immutd/immutd/internal/agent.Version="+commit, "./cmd/immutd"); err != nil {
		t.Fatalf("build %s: %v", commit, err)
	}
	return bin
}

// TestUpgradeFromPreviousReleaseRollsNoFleet runs the previous release's
// agent until its fleet is healthy, stops it, and starts this release on
// the same data directory and fleet files: every instance is kept, none
// is seen as drifted, and nothing is launched or terminated.
func TestUpgradeFromPreviousReleaseRollsNoFleet(t *testing.T) {
	for _, rel := range previousReleases {
		t.Run(rel, func(t *testing.T) { upgradeRollsNoFleet(t, rel) })
	}
}

func upgradeRollsNoFleet(t *testing.T, previousRelease string) {
	old := buildRelease(t, previousRelease)
	e := newEnv(t, envOpts{})
	fleetText := strings.Replace(fleetFile("web", 2, "v1", ""), `stop_grace = "2s"`,
		`stop_grace = "2s"
    args       = ["-ready-after", "10ms"]
    env        = { GREETING = "upgrade" }`, 1)
	e.writeFleet("web.hcl", fleetText)
	e.bin = old
	e.start()
	before := e.waitHealthy("web", 2, "", 30*time.Second)
	if st := e.status(); st.Version != previousRelease {
		t.Fatalf("the first agent runs %q, want the previous release", st.Version)
	}
	seq := e.lastSeq()
	e.stop()
	e.bin = ""

	e.start()
	if st := e.status(); st.Version != "e2e" {
		t.Fatalf("the second agent runs %q, want this release", st.Version)
	}
	// An edit makes this release commit every fleet again, with the
	// launch template hashes it computes: they must be the old ones.
	gen := e.status().Generation
	e.writeFleet("web.hcl", "# edited after the upgrade\n"+fleetText)
	e.writeFleet("other.hcl", fleetFile("other", 0, "v1", ""))
	e.waitFor("the edit to be committed", 30*time.Second, func() (bool, string) {
		st := e.status()
		return st.Generation > gen && len(st.Fleets) == 2, fmt.Sprintf("generation %d", st.Generation)
	})
	e.waitPasses(5)
	after := e.waitHealthy("web", 2, "", 30*time.Second)
	if fmt.Sprint(ids(after)) != fmt.Sprint(ids(before)) {
		t.Fatalf("instances changed across the upgrade: %s, before %s", describe(after), describe(before))
	}
	for _, in := range after.Instances {
		if !in.UpToDate || len(in.Drift) > 0 {
			t.Errorf("instance %s after the upgrade: up to date %v, drift %v", in.ID, in.UpToDate, in.Drift)
		}
	}
	for _, ev := range e.eventsAfter(seq) {
		if strings.HasPrefix(string(ev.Action), "launch") || strings.HasPrefix(string(ev.Action), "terminate") || (ev.Action == "desired_changed" && ev.Fleet == "web") {
			t.Errorf("after the upgrade: %s %s %s (%s) %v", ev.Action, ev.Fleet, ev.InstanceID, ev.Reason, ev.Evidence)
		}
	}

	// Putting the upgraded fleet behind a traffic gate admits the
	// instances it has; it replaces none.
	seq = e.lastSeq()
	targets := filepath.Join(e.dir, "targets", "web.json")
	e.writeFleet("web.hcl", strings.Replace(fleetText, "\n}\n", fmt.Sprintf(`
  traffic {
    min_ready = "500ms"
    file "targets" {
      path = %q
    }
  }
}
`, targets), 1))
	e.waitFor("the upgraded instances admitted", 30*time.Second, func() (bool, string) {
		f := e.fleet("web")
		admitted := 0
		for _, in := range f.Instances {
			if in.Traffic == "admitted" {
				admitted++
			}
		}
		return admitted == 2 && fmt.Sprint(ids(f)) == fmt.Sprint(ids(before)), describe(f)
	})
	for _, ev := range e.eventsAfter(seq) {
		if strings.HasPrefix(string(ev.Action), "launch") || strings.HasPrefix(string(ev.Action), "terminate") {
			t.Errorf("after adding a traffic gate: %s %s (%s)", ev.Action, ev.InstanceID, ev.Reason)
		}
	}
}

// rollingFrom is the release a cluster's rolling upgrade is tested from:
// the last one landed before this release.
const rollingFrom = "0e0b65d"

// TestRollingUpgradeOfAClusterRollsNoFleet upgrades a 3-agent cluster the
// way the README says, one agent at a time, followers first and the
// leader last, from the previous release to this one, with a fleet under
// management all along: at every step the cluster agrees on a leader and
// the fleet stays healthy, and at the end the same instance processes
// run, and nothing was launched or terminated.
func TestRollingUpgradeOfAClusterRollsNoFleet(t *testing.T) {
	old := buildRelease(t, rollingFrom)
	c := newCluster(t, 3, "")
	for _, e := range c.agents {
		e.bin = old
	}
	c.writeFleet("web.hcl", fleetFile("web", 3, "v1", ""))
	c.start()
	before := c.waitHealthy("web", 3)
	for i, e := range c.agents {
		if v := e.status().Version; v != rollingFrom {
			t.Fatalf("agent %d runs %q before the upgrade, want %s", i, v, rollingFrom)
		}
	}
	pids := map[string]int{}
	for _, in := range before.Instances {
		pids[in.ID] = localPID(t, in)
	}
	lead := c.leader()
	mark := c.agents[lead].lastSeq()
	var order []int
	for i := range c.agents {
		if i != lead {
			order = append(order, i)
		}
	}
	order = append(order, lead)
	for step, i := range order {
		e := c.agents[i]
		e.stop()
		e.bin = ""
		e.start()
		c.leader()
		c.waitHealthy("web", 3)
		if v := e.status().Version; v != "e2e" {
			t.Fatalf("step %d: agent %d runs %q after its upgrade", step, i, v)
		}
		t.Logf("step %d: agent %d upgraded; the leader is agent %d", step+1, i, c.leader())
	}
	lead = c.leader()
	c.agents[lead].waitPasses(3)
	after := c.waitHealthy("web", 3)
	for _, in := range after.Instances {
		pid, ok := pids[in.ID]
		if !ok || localPID(t, in) != pid {
			t.Errorf("instance %s (pid %s) is not one of the fleet before the upgrade %v", in.ID, in.ProviderRef, pids)
		}
	}
	for _, ev := range c.agents[lead].eventsAfter(mark) {
		switch ev.Action {
		case "launched", "terminated", "launch_planned", "terminate_planned":
			t.Errorf("the upgrade %s %s (%s %v)", ev.Action, ev.InstanceID, ev.Reason, ev.Evidence)
		}
	}
}
