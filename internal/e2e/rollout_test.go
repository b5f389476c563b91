package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/immutd/immutd/internal/analysis/promtest"
	"github.com/immutd/immutd/internal/api"
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
		return "  rollout {\n    strategy = \"canary\"\n    canary = 1\n    promote_after = \"1h\"\n    bake = \"" + bake + "\"\n    on_failure = \"revert\"\n  }\n"
	}
	e.writeFleet("web.hcl", fleetFile("web", 2, "v1", policy("1s")))
	e.start()
	first := e.waitHealthy("web", 2, "", 60*time.Second)
	e.waitEvent(0, 60*time.Second, func(ev state.Event) bool { return ev.Action == state.ActionRolloutStable && ev.Fleet == "web" })
	mark := e.lastSeq()
	old := ids(first)

	// The old instances answer requests throughout: a bounded loop asks
	// each of them until the test ends.
	served, failed := serveCheck(t, first.Instances)
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
	ok, bad := served(), failed()
	t.Logf("old instances answered %d requests during the canary and its revert, %d failed", ok, bad)
	if bad > 0 || ok < 20 {
		t.Fatalf("old instances: %d requests answered, %d failed", ok, bad)
	}
}

// serveCheck sends a request to each instance every 100ms until the test
// ends (at most 5 minutes) and counts the answers and the failures.
func serveCheck(t *testing.T, ins []api.Instance) (served, failed func() int64) {
	var ok, bad atomic.Int64
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		c := http.Client{Timeout: 5 * time.Second}
		for deadline := time.Now().Add(5 * time.Minute); time.Now().Before(deadline); {
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
			for _, in := range ins {
				resp, err := c.Get("http://" + in.Address + "/")
				if err == nil {
					resp.Body.Close()
				}
				if err != nil || resp.StatusCode != http.StatusOK {
					bad.Add(1)
				} else {
					ok.Add(1)
				}
			}
		}
	}()
	t.Cleanup(func() { close(stop); <-done })
	return ok.Load, bad.Load
}

// TestAnalysisAbortsACanaryWhoseErrorsRise: a real Prometheus scrapes the
// instances immutd admits (through the fleet's file_sd traffic backend);
// version 2's canary passes its health checks but answers errors 3s
// after it starts, and the analysis on its error counter fails the
// rollout, which reverts while the old instances serve throughout.
func TestAnalysisAbortsACanaryWhoseErrorsRise(t *testing.T) {
	e := newEnv(t, envOpts{})
	targets := filepath.Join(e.dir, "targets", "web.json")
	must(t, os.MkdirAll(filepath.Dir(targets), 0o755))
	must(t, os.WriteFile(targets, []byte("[]\n"), 0o644))
	prom := promtest.StartFileSD(t, targets)
	policy := func(bake string) string {
		return fmt.Sprintf(`  traffic {
    min_ready = "500ms"
    file "targets" {
      path = %q
    }
  }
  rollout {
    strategy      = "canary"
    canary        = 1
    promote_after = "1h"
    bake          = %q
    on_failure    = "revert"
    analysis {
      prometheus = %q
      interval   = "1s"
      metric "errors" {
        query   = "sum(increase(sampleapp_errors_total{image_digest=\"{{image_digest}}\"}[15s])) or vector(0)"
        success = "result < 1"
        failure = "result >= 1"
      }
    }
  }
`, targets, bake, prom)
	}
	e.writeFleet("web.hcl", fleetFile("web", 2, "v1", policy("1s")))
	e.start()
	first := e.waitHealthy("web", 2, "", 60*time.Second)
	e.waitEvent(0, 60*time.Second, func(ev state.Event) bool { return ev.Action == state.ActionRolloutStable && ev.Fleet == "web" })
	mark := e.lastSeq()
	old := ids(first)

	v2 := fleetFile("web", 2, "v2", policy("10m"))
	v2 = strings.Replace(v2, `stop_grace = "2s"`, "stop_grace = \"2s\"\n    args = [\"-error-after\", \"3s\"]", 1)
	e.writeFleet("web.hcl", v2)
	var canary api.Instance
	e.waitFor("the canary admitted next to the old instances", 60*time.Second, func() (bool, string) {
		f := e.fleet("web")
		for _, in := range f.Instances {
			if !old[in.ID] && in.Traffic == "admitted" {
				canary = in
			}
		}
		return canary.ID != "", describe(f)
	})
	// The target file marks the canary as one.
	e.waitFor("the canary labelled in the target file", 30*time.Second, func() (bool, string) {
		raw, err := os.ReadFile(targets)
		if err != nil {
			return false, err.Error()
		}
		var groups []struct {
			Labels map[string]string `json:"labels"`
		}
		if err := json.Unmarshal(raw, &groups); err != nil {
			return false, err.Error()
		}
		for _, g := range groups {
			if g.Labels["immutd_instance"] == canary.ID {
				return g.Labels["canary"] == "true", fmt.Sprint(g.Labels)
			}
		}
		return false, string(raw)
	})
	// Requests to the canary: its errors are what the analysis sees. The
	// loop is bounded and ends with the test.
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		c := http.Client{Timeout: time.Second}
		for deadline := time.Now().Add(3 * time.Minute); time.Now().Before(deadline); {
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
			if resp, err := c.Get("http://" + canary.Address + "/"); err == nil {
				resp.Body.Close()
			}
		}
	}()
	defer func() { close(stop); <-done }()
	failed := e.waitEvent(mark, 120*time.Second, func(ev state.Event) bool { return ev.Action == state.ActionRolloutFailed && ev.Fleet == "web" })
	if !strings.Contains(strings.Join(failed.Evidence, " "), "analysis metric errors is failed") {
		t.Fatalf("the rollout failed, but not for its analysis: %+v", failed)
	}
	e.waitEvent(mark, 30*time.Second, func(ev state.Event) bool { return ev.Action == state.ActionReverted && ev.Reason == "auto_revert" })
	e.waitTerminated("web", canary.ID)
	after := e.waitHealthy("web", 2, first.ImageDigest, 60*time.Second)
	if !sameKeys(ids(after), old) {
		t.Fatalf("the old instances did not survive: before %v, after %v", old, ids(after))
	}
	for _, ev := range e.eventsAfter(mark) {
		if ev.Action == state.ActionRolloutPromoted || (ev.Action == state.ActionTerminatePlanned || ev.Action == state.ActionDrainPlanned) && old[ev.InstanceID] {
			t.Fatalf("during the broken canary: %+v", ev)
		}
	}
}

// TestCheckpointPausesARollout: a rolling rollout of 4 instances with a
// manual checkpoint at 50% stops with two instances on the new version,
// says so, and goes on to the end when an operator resumes it.
func TestCheckpointPausesARollout(t *testing.T) {
	e := newEnv(t, envOpts{})
	policy := "  rollout {\n    checkpoints = [\"50%\"]\n  }\n"
	e.writeFleet("web.hcl", fleetFile("web", 4, "v1", policy))
	e.start()
	first := e.waitHealthy("web", 4, "", 60*time.Second)
	mark := e.lastSeq()
	e.writeFleet("web.hcl", fleetFile("web", 4, "v2", policy))
	e.waitEvent(mark, 90*time.Second, func(ev state.Event) bool { return ev.Action == state.ActionRolloutPaused && ev.Reason == "checkpoint" })
	e.waitPasses(5)
	// Paused at 2 of 4 (a third launch may have been in flight when the
	// checkpoint was reached); the old ones left are not replaced.
	f := e.fleet("web")
	v1, v2 := 0, 0
	for _, in := range f.Instances {
		switch in.ImageDigest {
		case first.ImageDigest:
			v1++
		case f.ImageDigest:
			v2++
		}
	}
	if v2 < 2 || v2 > 3 || v1 < 1 || !strings.Contains(f.Rollout, "paused") {
		t.Fatalf("at the checkpoint: %d instances of v1, %d of v2, rollout %q: %s", v1, v2, f.Rollout, describe(f))
	}
	if out, code := e.cli("rollout", "resume", "web"); code != 0 {
		t.Fatalf("resume (exit %d): %s", code, out)
	}
	e.waitEvent(mark, 90*time.Second, func(ev state.Event) bool { return ev.Action == state.ActionRolloutComplete })
	after := e.waitHealthy("web", 4, "", 60*time.Second)
	for _, in := range after.Instances {
		if in.ImageDigest == first.ImageDigest {
			t.Fatalf("after the resume an old instance is left: %s", describe(after))
		}
	}
}

// TestRolloutControlsSurviveFailover: a canary rollout waiting for a
// manual promotion, and an operator's pause of another fleet, are in raft:
// the leader is killed -9, the new one keeps the canary waiting (nothing
// promoted, the old instances untouched) and the pause in force; an
// operator's promote through a surviving agent then finishes the rollout.
func TestRolloutControlsSurviveFailover(t *testing.T) {
	c := newCluster(t, 3, "")
	policy := "  rollout {\n    strategy = \"canary\"\n    canary = 1\n    progress_deadline = \"1h\"\n  }\n"
	c.writeFleet("web.hcl", fleetFile("web", 2, "v1", policy))
	c.start()
	first := c.waitHealthy("web", 2)
	old := ids(first)
	l := c.leader()
	e := c.agents[l]
	e.waitEvent(0, 60*time.Second, func(ev state.Event) bool { return ev.Action == state.ActionRolloutStable })
	c.writeFleet("web.hcl", fleetFile("web", 2, "v2", policy))
	e.waitFor("the canary next to the old instances", 60*time.Second, func() (bool, string) {
		f, err := e.consistentStatus()
		if err != nil {
			return false, err.Error()
		}
		fl, _ := fleetOf(f, "web")
		healthy := 0
		for _, in := range fl.Instances {
			if in.State == "healthy" {
				healthy++
			}
		}
		return healthy == 3 && len(fl.Instances) == 3, describe(fl)
	})
	if out, code := e.cli("pause", "-fleet", "web", "maintenance"); code != 0 {
		t.Fatalf("pause (exit %d): %s", code, out)
	}
	e.kill9()
	n := c.leader(l)
	next := c.agents[n]
	next.waitPasses(5)
	st, err := next.consistentStatus()
	if err != nil {
		t.Fatal(err)
	}
	f, _ := fleetOf(st, "web")
	if len(st.Pauses) != 1 || blockedBy(f, "paused") == nil {
		t.Fatalf("after the failover: pauses %+v, fleet %s", st.Pauses, describe(f))
	}
	for id := range old {
		if stateOf(f, id) != "healthy" {
			t.Fatalf("old instance %s after the failover: %s", id, describe(f))
		}
	}
	if out, code := next.cli("unpause", "-all"); code != 0 {
		t.Fatalf("unpause (exit %d): %s", code, out)
	}
	next.waitPasses(3)
	for _, ev := range next.events() {
		if ev.Action == state.ActionRolloutPromoted {
			t.Fatalf("promoted without an operator: %+v", ev)
		}
	}
	if out, code := next.cli("rollout", "promote", "web"); code != 0 {
		t.Fatalf("promote (exit %d): %s", code, out)
	}
	next.waitEvent(0, 90*time.Second, func(ev state.Event) bool { return ev.Action == state.ActionRolloutComplete && ev.Fleet == "web" })
	after := c.waitHealthy("web", 2, l)
	for id := range ids(after) {
		if old[id] {
			t.Fatalf("an old instance is left after the promoted rollout: %s", describe(after))
		}
	}
}
