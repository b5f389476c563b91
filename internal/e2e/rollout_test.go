package e2e

import (
	"strings"
	"testing"
	"time"

	"github.com/immutd/immutd/internal/state"
)

// TestBrokenRolloutAutoReverts: version 2 of a fleet passes its checks
// for 5 seconds, then fails; with on_failure = "revert" the failure
// (within the bake) reverts the fleet to version 1, its last stable
// version, fast; status says how the fleet differs from its file; an
// edit of the file back to version 1's image ends the revert without
// replacing anything.
func TestBrokenRolloutAutoReverts(t *testing.T) {
	e := newEnv(t, envOpts{})
	v1 := fleetFile("web", 2, "v1", "  rollout {\n    bake = \"1s\"\n    on_failure = \"revert\"\n  }\n")
	e.writeFleet("web.hcl", v1)
	e.start()
	first := e.waitHealthy("web", 2, "", 60*time.Second)
	v1Digest := first.ImageDigest
	e.waitEvent(0, 60*time.Second, func(ev state.Event) bool { return ev.Action == state.ActionRolloutStable && ev.Fleet == "web" })
	mark := e.lastSeq()

	// Version 2 fails 5s after each instance starts; a long bake makes
	// the failure fall within it wherever the rollout stands.
	v2 := fleetFile("web", 2, "v2", "  rollout {\n    bake = \"10m\"\n    on_failure = \"revert\"\n  }\n")
	v2 = strings.Replace(v2, `stop_grace = "2s"`, "stop_grace = \"2s\"\n    args = [\"-fail-after\", \"5s\"]", 1)
	e.writeFleet("web.hcl", v2)
	failed := e.waitEvent(mark, 90*time.Second, func(ev state.Event) bool { return ev.Action == state.ActionRolloutFailed && ev.Fleet == "web" })
	reverted := e.waitEvent(mark, 30*time.Second, func(ev state.Event) bool { return ev.Action == state.ActionReverted && ev.Fleet == "web" })
	if reverted.Reason != "auto_revert" || !strings.Contains(strings.Join(reverted.Evidence, " "), "back to version 1 (the last stable) from 2") {
		t.Fatalf("revert event %+v (failure %+v)", reverted, failed)
	}
	f := e.waitHealthy("web", 2, v1Digest, 90*time.Second)
	if f.Version != 1 || f.FileVersion != 2 || !strings.Contains(f.Reverted, "runs version 1 instead of its file's version 2") {
		t.Fatalf("status of the reverted fleet: version %d, file version %d, %q", f.Version, f.FileVersion, f.Reverted)
	}
	out, code := e.cli("rollout", "status", "web")
	if code != 0 || !strings.Contains(out, "REVERTED") || !strings.Contains(out, "failed") || !strings.Contains(out, "stable") {
		t.Fatalf("rollout status (exit %d):\n%s", code, out)
	}
	metrics := get(t, "http://"+e.httpAddr+"/metrics")
	if !strings.Contains(metrics, `immutd_fleet_reverted{fleet="web"} 1`) {
		t.Fatalf("metrics do not show the revert:\n%s", grepLines(metrics, "reverted"))
	}
	// The file back on version 1's image: the revert ends, nothing is
	// replaced.
	before := ids(f)
	mark = e.lastSeq()
	e.writeFleet("web.hcl", v1)
	e.waitEvent(mark, 30*time.Second, func(ev state.Event) bool { return ev.Action == state.ActionRevertEnded && ev.Reason == "file_changed" })
	e.waitPasses(5)
	after := e.waitHealthy("web", 2, v1Digest, 30*time.Second)
	if fmt := ids(after); len(fmt) != len(before) || !sameKeys(fmt, before) || after.Reverted != "" {
		t.Fatalf("ending the revert changed instances or kept it: before %v after %v (%q)", before, ids(after), after.Reverted)
	}
	if k := kills(e.eventsAfter(mark), "web"); len(k) > 0 {
		t.Fatalf("ending the revert killed: %+v", k)
	}
}

func sameKeys(a, b map[string]bool) bool {
	for k := range a {
		if !b[k] {
			return false
		}
	}
	return len(a) == len(b)
}
