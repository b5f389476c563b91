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
	"github.com/immutd/immutd/internal/traffic/haproxy/haproxytest"
)

// BenchmarkCanaryRevert measures how fast a bad canary is reverted: a
// 2-instance local fleet rolls from v1 to v2 with one canary
// (on_failure = "revert"); once the canary is healthy the test makes it
// fail (POST /fail, at t0) and reads from the event log when the rollout
// failed, when the revert was journaled and when the canary was
// terminated (the revert complete: the fleet runs only v1 again). The
// baseline, measured in the same trials, is detection: t0 to the agent's
// verdict turning unhealthy (from its log), which the check's schedule
// puts between (unhealthy_threshold - 1) × interval and unhealthy_threshold
// × interval after the failure (300 to 600ms here); what comes after it
// is the cost of the rollout machinery.
func BenchmarkCanaryRevert(b *testing.B) {
	for b.Loop() {
		const trials = 5
		var detected, failed, reverted, done []time.Duration
		for range trials {
			v, f, r, d := canaryRevert(b)
			b.Logf("trial: unhealthy verdict %v, rollout failed %v, reverted %v, canary terminated %v", v, f, r, d)
			detected, failed, reverted, done = append(detected, v), append(failed, f), append(reverted, r), append(done, d)
		}
		b.Logf("detection window: (unhealthy_threshold 2 - 1) x interval 300ms to 2 x 300ms = 300 to 600 ms after the failure")
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

// BenchmarkBlueGreenSwitch measures a blue-green switch behind a real
// HAProxy, from the event log of three rollouts of a 3-instance fleet
// (v1 to v2, back to v1, to v2): from the switch being journaled to the
// last new instance admitted (HAProxy confirmed it ready), and to the
// last old one out of traffic (HAProxy confirmed it drained). The
// baseline in the same run is one admission alone (admit intent
// committed to admitted), the least one step of the switch can take.
func BenchmarkBlueGreenSwitch(b *testing.B) {
	for b.Loop() {
		h := haproxytest.Start(b, haproxytest.Options{})
		e := newEnv(b, envOpts{})
		e.start()
		bg := "  rollout {\n    strategy = \"blue_green\"\n  }\n"
		version := func(v string) string { return fleetFile("web", 3, v, trafficBlock(h.Socket)+bg) }
		e.writeFleet("web.hcl", version("v1"))
		admittedFleet(b, e.trystatus, h, "web", 3, "")
		var admitted, drained, admitOne []time.Duration
		for _, v := range []string{"v2", "v1", "v2"} {
			mark := e.lastSeq()
			e.writeFleet("web.hcl", version(v))
			sw := e.waitEvent(mark, 2*time.Minute, func(ev state.Event) bool { return ev.Action == state.ActionRolloutSwitched })
			stable := e.waitEvent(mark, 2*time.Minute, func(ev state.Event) bool { return ev.Action == state.ActionRolloutStable })
			var lastAdmit, lastRemoved time.Time
			planned := map[string]time.Time{}
			for _, ev := range e.eventsAfter(sw.Seq) {
				if ev.Seq > stable.Seq {
					break
				}
				switch ev.Action {
				case state.ActionAdmitPlanned:
					planned[ev.InstanceID] = ev.Time
				case state.ActionAdmitted:
					lastAdmit = ev.Time
					admitOne = append(admitOne, ev.Time.Sub(planned[ev.InstanceID]))
				case state.ActionTrafficRemoved:
					lastRemoved = ev.Time
				}
			}
			admitted, drained = append(admitted, lastAdmit.Sub(sw.Time)), append(drained, lastRemoved.Sub(sw.Time))
		}
		report(b, "switch_to_new_set_admitted", admitted)
		report(b, "switch_to_old_set_out", drained)
		report(b, "one_admission", admitOne)
	}
}
