package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/immutd/immutd/internal/api"
	"github.com/immutd/immutd/internal/state"
)

// BenchmarkCanaryRevert measures how fast a bad canary is reverted: a
// 2-instance local fleet rolls from v1 to v2 with one canary
// (on_failure = "revert"); once the canary is healthy the test makes it
// fail (POST /fail, at t0) and reads from the event log when the rollout
// failed, when the revert was journaled and when the canary was
// terminated (the revert complete: the fleet runs only v1 again). The
// baseline, measured in the same trials, is detection: t0 to the agent's
// verdict turning unhealthy (from its log), whose floor is the check's
// unhealthy_threshold × interval (2 × 300ms); what comes after it is the
// cost of the rollout machinery.
func BenchmarkCanaryRevert(b *testing.B) {
	for b.Loop() {
		const trials = 5
		var detected, failed, reverted, done []time.Duration
		for range trials {
			v, f, r, d := canaryRevert(b)
			detected, failed, reverted, done = append(detected, v), append(failed, f), append(reverted, r), append(done, d)
		}
		b.Logf("detection floor: unhealthy_threshold 2 x interval 300ms = 600 ms")
		report(b, "canary_fail_to_unhealthy_verdict", detected)
		report(b, "canary_fail_to_rollout_failed", failed)
		report(b, "canary_fail_to_reverted", reverted)
		report(b, "canary_fail_to_revert_complete", done)
	}
}

func canaryRevert(b *testing.B) (detected, failed, reverted, done time.Duration) {
	e := newEnv(b, envOpts{})
	defer e.cleanup()
	policy := "  rollout {\n    strategy = \"canary\"\n    canary = 1\n    promote_after = \"1h\"\n    bake = \"1s\"\n    on_failure = \"revert\"\n  }\n"
	e.writeFleet("web.hcl", fleetFile("web", 2, "v1", policy))
	e.start()
	first := e.waitHealthy("web", 2, "", 60*time.Second)
	e.waitEvent(0, 60*time.Second, func(ev state.Event) bool { return ev.Action == state.ActionRolloutStable && ev.Fleet == "web" })
	old := ids(first)
	e.writeFleet("web.hcl", fleetFile("web", 2, "v2", policy))
	var canary api.Instance
	e.waitFor("the canary to be healthy", 60*time.Second, func() (bool, string) {
		f := e.fleet("web")
		for _, in := range f.Instances {
			if !old[in.ID] && in.State == "healthy" {
				canary = in
			}
		}
		return canary.ID != "", describe(f)
	})
	mark := e.lastSeq()
	t0 := time.Now()
	setHealth(b, canary, true)
	f := e.waitEvent(mark, 60*time.Second, func(ev state.Event) bool { return ev.Action == state.ActionRolloutFailed })
	r := e.waitEvent(mark, 60*time.Second, func(ev state.Event) bool { return ev.Action == state.ActionReverted })
	d := e.waitTerminated("web", canary.ID)
	return verdictAt(b, e, canary.ID, "unhealthy").Sub(t0), f.Time.Sub(t0), r.Time.Sub(t0), d.Time.Sub(t0)
}

// verdictAt is when the agent's log says the instance's verdict turned
// to the given one (first time).
func verdictAt(b *testing.B, e *env, id, to string) time.Time {
	raw, err := os.ReadFile(filepath.Join(e.dir, "agent.log"))
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(string(raw), "\n") {
		var l struct {
			Time       time.Time `json:"time"`
			Msg        string    `json:"msg"`
			InstanceID string    `json:"instance_id"`
			To         string    `json:"to"`
		}
		if json.Unmarshal([]byte(line), &l) == nil && l.Msg == "instance verdict changed" && l.InstanceID == id && l.To == to {
			return l.Time
		}
	}
	b.Fatalf("no verdict change of %s to %s in the agent log", id, to)
	return time.Time{}
}
