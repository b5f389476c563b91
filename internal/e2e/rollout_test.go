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

// TestBrokenCanaryAutoRevertsOldInstancesServing: a canary of version 2
// that fails 5s after it starts reverts the fleet to version 1, and the
// version-1 instances serve throughout: none is terminated, all stay
// healthy, and the canary is the only instance replaced.
func TestBrokenCanaryAutoRevertsOldInstancesServing(t *testing.T) {
	e := newEnv(t, envOpts{})
	policy := func(bake string) string {
		return "  rollout {\n    strategy = \"canary\"\n    canary = 1\n    promote_after = \"1m\"\n    bake = \"" + bake + "\"\n    on_failure = \"revert\"\n  }\n"
	}
	e.writeFleet("web.hcl", fleetFile("web", 2, "v1", policy("1s")))
	e.start()
	first := e.waitHealthy("web", 2, "", 60*time.Second)
	e.waitEvent(0, 60*time.Second, func(ev state.Event) bool { return ev.Action == state.ActionRolloutStable && ev.Fleet == "web" })
	mark := e.lastSeq()
	old := ids(first)

	v2 := fleetFile("web", 2, "v2", policy("10m"))
	v2 = strings.Replace(v2, `stop_grace = "2s"`, "stop_grace = \"2s\"\n    args = [\"-fail-after\", \"5s\"]", 1)
	e.writeFleet("web.hcl", v2)
	// The canary comes up next to the two old instances.
	var canary string
	e.waitFor("the canary to run next to the old instances", 60*time.Second, func() (bool, string) {
		f := e.fleet("web")
		for _, in := range f.Instances {
			if !old[in.ID] && in.State == "healthy" {
				canary = in.ID
			}
		}
		return canary != "" && len(f.Instances) == 3, describe(f)
	})
	reverted := e.waitEvent(mark, 90*time.Second, func(ev state.Event) bool { return ev.Action == state.ActionReverted && ev.Fleet == "web" })
	if reverted.Reason != "auto_revert" {
		t.Fatalf("revert %+v", reverted)
	}
	e.waitTerminated("web", canary)
	after := e.waitHealthy("web", 2, first.ImageDigest, 60*time.Second)
	if !sameKeys(ids(after), old) {
		t.Fatalf("the old instances did not survive the broken canary: before %v, after %v", old, ids(after))
	}
	for _, k := range kills(e.eventsAfter(mark), "web") {
		if old[k.InstanceID] {
			t.Fatalf("an old instance was terminated during the canary: %+v", k)
		}
	}
	for _, ev := range e.eventsAfter(mark) {
		if ev.Action == state.ActionRolloutPromoted {
			t.Fatalf("the broken canary was promoted: %+v", ev)
		}
	}
}
