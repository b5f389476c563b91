package e2e

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/immutd/immutd/internal/api"
	"github.com/immutd/immutd/internal/state"
)

// Tests of the remediation guards of issue 10: storms, kill rates,
// pauses, report mode, plan and explain, on the real binary.

// setHealth makes a sample app instance fail (/fail) or pass (/recover)
// its checks from now on.
func setHealth(t testing.TB, in api.Instance, failing bool) {
	t.Helper()
	path := "/recover"
	if failing {
		path = "/fail"
	}
	resp, err := http.Post("http://"+in.Address+path, "text/plain", nil)
	if err != nil {
		t.Fatalf("%s %s: %v", path, in.ID, err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("%s %s: status %d", path, in.ID, resp.StatusCode)
	}
}

func blockedBy(f api.Fleet, cause string) *api.Block {
	for i := range f.Blocked {
		if f.Blocked[i].Cause == cause {
			return &f.Blocked[i]
		}
	}
	return nil
}

// kills lists the terminate and drain intents of running instances the
// event log holds for a fleet after seq (the remediation kills and
// every other).
func kills(evs []state.Event, fleet string) []state.Event {
	var out []state.Event
	for _, ev := range evs {
		if ev.Fleet == fleet && (ev.Action == state.ActionTerminatePlanned || ev.Action == state.ActionDrainPlanned) && ev.Reason != "exited" && ev.Reason != "gone" {
			out = append(out, ev)
		}
	}
	return out
}

// TestFleetWideFailureKillsNothing: every instance of a fleet made
// unhealthy at once is a storm, an observer problem more likely than
// three broken instances: nothing is killed, status, plan, the event log
// and the metrics say why, and once the instances pass again the fleet
// is whole with the same instances.
func TestFleetWideFailureKillsNothing(t *testing.T) {
	e := newEnv(t, envOpts{})
	// The breaker alone would stop this too: max_unhealthy 100% leaves the
	// storm guard the only thing that can.
	// unhealthy_threshold 5 at 300ms: a settle window of 1.5s against a
	// spread of one interval (300ms) between the instances' probes, so
	// that a loaded host delaying probes does not make the failure look
	// like single ones.
	src := fleetFile("web", 3, "v1", "  remediation {\n    max_unhealthy = \"100%\"\n    max_parallel = 3\n    storm_cooldown = \"2s\"\n  }\n")
	e.writeFleet("web.hcl", strings.Replace(src, "unhealthy_threshold = 2", "unhealthy_threshold = 5", 1))
	e.start()
	f := e.waitHealthy("web", 3, "", 60*time.Second)
	before := ids(f)
	mark := e.lastSeq()
	for _, in := range f.Instances {
		setHealth(t, in, true)
	}
	e.waitFor("the storm to be named", 60*time.Second, func() (bool, string) {
		f := e.fleet("web")
		return blockedBy(f, "storm") != nil && f.States["unhealthy"] == 3, describe(f)
	})
	e.waitEvent(mark, 30*time.Second, func(ev state.Event) bool { return ev.Action == state.ActionStormStarted && ev.Fleet == "web" })
	// Several passes in the storm: still nothing is killed.
	e.waitPasses(5)
	out, code := e.cli("plan", "web")
	if code != 0 || !strings.Contains(out, "storm") || !strings.Contains(out, "HELD BACK") {
		t.Fatalf("plan during the storm (exit %d):\n%s", code, out)
	}
	metrics := get(t, "http://"+e.httpAddr+"/metrics")
	if !strings.Contains(metrics, `immutd_remediation_blocked{cause="storm",fleet="web"} 1`) {
		t.Fatalf("metrics do not show the storm:\n%s", grepLines(metrics, "immutd_remediation_blocked"))
	}
	victim := f.Instances[0].ID
	out, code = e.cli("explain", victim)
	if code != 0 || !strings.Contains(out, "storm holds it back") {
		t.Fatalf("explain %s during the storm (exit %d):\n%s", victim, code, out)
	}
	for _, in := range f.Instances {
		setHealth(t, in, false)
	}
	e.waitEvent(mark, 60*time.Second, func(ev state.Event) bool { return ev.Action == state.ActionStormEnded && ev.Fleet == "web" })
	after := e.waitHealthy("web", 3, "", 60*time.Second)
	e.waitPasses(5) // past the 2s cooldown
	if k := kills(e.eventsAfter(mark), "web"); len(k) > 0 {
		t.Fatalf("a fleet-wide failure killed %d instances: %+v", len(k), k)
	}
	// fmt prints a map's keys sorted.
	if got := ids(e.fleet("web")); fmt.Sprint(got) != fmt.Sprint(before) {
		t.Fatalf("instances changed: before %v, after %v (%s)", before, got, describe(after))
	}
}

// TestFlapStormStaysUnderTheRate: twenty instances in turn fail their
// checks and stay failing until they are killed or the kill rate holds
// them; the fleet's rate of 3 per 10 minutes lets exactly three go, and
// every later one is held, named in status, and recovers in place.
func TestFlapStormStaysUnderTheRate(t *testing.T) {
	e := newEnv(t, envOpts{})
	// Flap detection off: each instance fails five times here, which
	// TestFlappingInstanceIsReplaced covers.
	e.writeFleet("web.hcl", fleetFile("web", 4, "v1", "  remediation {\n    rate = \"3/10m\"\n    max_unhealthy = \"100%\"\n    flap_threshold = 0\n  }\n"))
	e.start()
	e.waitHealthy("web", 4, "", 60*time.Second)
	mark := e.lastSeq()
	held := 0
	for round := range 20 {
		f := e.waitHealthy("web", 4, "", 90*time.Second)
		victim := f.Instances[round%len(f.Instances)]
		setHealth(t, victim, true)
		killed := false
		e.waitFor(fmt.Sprintf("round %d: %s killed or held by the rate", round, victim.ID), 60*time.Second, func() (bool, string) {
			for _, k := range kills(e.eventsAfter(mark), "web") {
				if k.InstanceID == victim.ID {
					killed = true
					return true, ""
				}
			}
			f := e.fleet("web")
			b := blockedBy(f, "rate_limited")
			return b != nil && stateOf(f, victim.ID) == "unhealthy", describe(f)
		})
		if !killed {
			held++
			setHealth(t, victim, false)
		}
	}
	e.waitHealthy("web", 4, "", 90*time.Second)
	k := kills(e.eventsAfter(mark), "web")
	t.Logf("20 flaps: %d terminations, %d held by the rate", len(k), held)
	// Every termination is one of the three kills for health: a failing
	// instance the rate holds keeps its slot, so no replacement is made
	// for it and no healthy instance is removed as excess afterwards.
	if len(k) != 3 || held != 17 {
		t.Fatalf("20 flaps with rate 3/10m: %d terminations (want 3), %d held (want 17): %+v", len(k), held, k)
	}
	for _, ev := range k {
		if ev.Reason != "unhealthy" {
			t.Fatalf("termination for %s, not for health: %+v", ev.Reason, ev)
		}
	}
	if n := len(e.fleet("web").Instances); n != 4 {
		t.Fatalf("%d instances after the flaps, want 4", n)
	}
}

// TestFlappingInstanceIsReplaced: an instance that fails and recovers
// three times within the flap window is marked flapping and replaced
// while it passes, with the flaps as evidence. (healthy_delay is set so
// that recoveries go through it; its timing is the planner's tests'.)
func TestFlappingInstanceIsReplaced(t *testing.T) {
	e := newEnv(t, envOpts{})
	e.writeFleet("web.hcl", fleetFile("web", 2, "v1", "  remediation {\n    healthy_delay = \"1s\"\n  }\n"))
	e.start()
	f := e.waitHealthy("web", 2, "", 60*time.Second)
	victim := f.Instances[0]
	mark := e.lastSeq()
	for flap := range 3 {
		setHealth(t, victim, true)
		e.waitFor(fmt.Sprintf("flap %d: %s unhealthy", flap, victim.ID), 30*time.Second, func() (bool, string) {
			f := e.fleet("web")
			return stateOf(f, victim.ID) == "unhealthy", describe(f)
		})
		setHealth(t, victim, false)
		if flap == 2 {
			break
		}
		// Healthy again, first as recovering (healthy_delay), then healthy.
		e.waitFor(fmt.Sprintf("flap %d: %s recovering", flap, victim.ID), 30*time.Second, func() (bool, string) {
			f := e.fleet("web")
			for _, in := range f.Instances {
				if in.ID == victim.ID && (in.Recovering || in.State == "healthy") {
					return true, ""
				}
			}
			return false, describe(f)
		})
		e.waitHealthy("web", 2, "", 30*time.Second)
	}
	ev := e.waitTerminated("web", victim.ID)
	planned := findEvent(e.eventsAfter(mark), state.ActionTerminatePlanned, victim.ID)
	if planned == nil || planned.Reason != "unhealthy" || !strings.Contains(strings.Join(planned.Evidence, " "), "flapping: failed 3 times") {
		t.Fatalf("the flapping instance was not replaced for flapping: %+v (terminated %+v)", planned, ev)
	}
	e.waitHealthy("web", 2, "", 60*time.Second, victim.ID)
}

// TestPauseHoldsAFleet: a pause, which needs the API token, holds a fleet
// still: an instance killed underneath it is not replaced until the last
// of two stacked pauses is removed; status and plan say who paused it
// and why.
func TestPauseHoldsAFleet(t *testing.T) {
	e := newEnv(t, envOpts{})
	e.writeFleet("web.hcl", fleetFile("web", 2, "v1", ""))
	e.start()
	f := e.waitHealthy("web", 2, "", 60*time.Second)
	// Without the token a pause is refused.
	out, code := runCLI("pause", "-addr", e.httpAddr, "no token")
	if code == 0 || !strings.Contains(out, "token") {
		t.Fatalf("pause without the token (exit %d): %s", code, out)
	}
	out, code = e.cli("pause", "-fleet", "web", "-by", "ana", "database", "migration")
	if code != 0 || !strings.Contains(out, "pause p1 holds fleet web") {
		t.Fatalf("pause (exit %d): %s", code, out)
	}
	if out, code = e.cli("pause", "-for", "1h", "network", "work"); code != 0 {
		t.Fatalf("second pause (exit %d): %s", code, out)
	}
	victim := f.Instances[0]
	if err := syscall.Kill(localPID(t, victim), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	e.waitFor("the killed instance to be seen exited", 30*time.Second, func() (bool, string) {
		f := e.fleet("web")
		return stateOf(f, victim.ID) == "exited" && blockedBy(f, "paused") != nil, describe(f)
	})
	e.waitPasses(5)
	f = e.fleet("web")
	if len(f.Instances) != 2 || stateOf(f, victim.ID) != "exited" {
		t.Fatalf("paused fleet changed: %s", describe(f))
	}
	st, _ := e.cli("status")
	if !strings.Contains(st, "PAUSED p1: fleet web: database migration (by ana)") || !strings.Contains(st, "PAUSED p2: every fleet: network work") {
		t.Fatalf("status does not show both pauses:\n%s", st)
	}
	out, _ = e.cli("plan")
	if !strings.Contains(out, "paused") || !strings.Contains(out, "launch") {
		t.Fatalf("plan does not show the launch the pause holds:\n%s", out)
	}
	if out, code = e.cli("unpause", "p1"); code != 0 {
		t.Fatalf("unpause p1 (exit %d): %s", code, out)
	}
	e.waitPasses(3)
	if f := e.fleet("web"); stateOf(f, victim.ID) != "exited" || blockedBy(f, "paused") == nil {
		t.Fatalf("one pause of two removed, the fleet moved: %s", describe(f))
	}
	if out, code = e.cli("unpause", "-all"); code != 0 {
		t.Fatalf("unpause -all (exit %d): %s", code, out)
	}
	e.waitHealthy("web", 2, "", 60*time.Second, victim.ID)
}

// TestReportModeOnlyReports: with remediation.report = ["drift_mutated"]
// an instance changed in place is reported, held and explained, not
// replaced; once the file acts on it again it is replaced, through the
// kill rate.
func TestReportModeOnlyReports(t *testing.T) {
	e := newEnv(t, envOpts{})
	report := "  remediation {\n    report = [\"drift_mutated\"]\n  }\n"
	e.writeFleet("web.hcl", fleetFile("web", 2, "v1", report))
	e.start()
	f := e.waitHealthy("web", 2, "", 60*time.Second)
	victim := f.Instances[0]
	mark := e.lastSeq()
	fh, err := os.OpenFile(filepath.Join(victim.Location, "config", "app.conf"), os.O_APPEND|os.O_WRONLY, 0)
	must(t, err)
	_, err = fh.WriteString("\n# changed in place\n")
	must(t, err)
	must(t, fh.Close())
	e.waitFor("the change to be reported", 30*time.Second, func() (bool, string) {
		f := e.fleet("web")
		b := blockedBy(f, "disabled")
		return b != nil && strings.Contains(b.Detail, "remediation.report lists drift_mutated"), describe(f)
	})
	out, code := e.cli("explain", victim.ID)
	if code != 0 || !strings.Contains(out, "disabled holds it back") || !strings.Contains(out, "drift_mutated") {
		t.Fatalf("explain (exit %d):\n%s", code, out)
	}
	e.waitPasses(3)
	if k := kills(e.eventsAfter(mark), "web"); len(k) > 0 {
		t.Fatalf("report mode killed: %+v", k)
	}
	e.writeFleet("web.hcl", fleetFile("web", 2, "v1", ""))
	e.waitTerminated("web", victim.ID)
	e.waitHealthy("web", 2, "", 60*time.Second, victim.ID)
	out, code = e.cli("explain", victim.ID)
	if code != 0 || !strings.Contains(out, "it was terminated at") || !strings.Contains(out, "drift_mutated") {
		t.Fatalf("explain of the replaced instance (exit %d):\n%s", code, out)
	}
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestQuarantineKeepsAFailingInstance: with a quarantine, an instance
// that fails is kept running for forensics instead of being killed (out
// of the fleet's count, a replacement launched), the next one is killed
// because the quarantine is full, and taking the quarantine out of the
// file ends it with a terminate.
func TestQuarantineKeepsAFailingInstance(t *testing.T) {
	e := newEnv(t, envOpts{})
	quarantine := "  remediation {\n    quarantine {\n      max = 1\n      ttl = \"1h\"\n    }\n  }\n"
	e.writeFleet("web.hcl", fleetFile("web", 2, "v1", quarantine))
	e.start()
	f := e.waitHealthy("web", 2, "", 60*time.Second)
	first, second := f.Instances[0], f.Instances[1]
	pid := localPID(t, first)
	mark := e.lastSeq()
	setHealth(t, first, true)
	e.waitEvent(mark, 60*time.Second, func(ev state.Event) bool { return ev.Action == state.ActionQuarantined && ev.InstanceID == first.ID })
	f = e.waitFor2Healthy(t, e, first.ID)
	if stateOf(f, first.ID) != "quarantined" {
		t.Fatalf("the quarantined instance shows as %s: %s", stateOf(f, first.ID), describe(f))
	}
	if err := syscall.Kill(pid, 0); err != nil {
		t.Fatalf("the quarantined instance's process %d is gone: %v", pid, err)
	}
	out, code := e.cli("explain", first.ID)
	if code != 0 || !strings.Contains(out, "quarantined") {
		t.Fatalf("explain of the quarantined instance (exit %d):\n%s", code, out)
	}
	// The quarantine is full: the next failing instance is killed.
	setHealth(t, second, true)
	e.waitTerminated("web", second.ID)
	planned := findEvent(e.eventsAfter(mark), state.ActionTerminatePlanned, second.ID)
	if planned == nil || planned.Reason != "unhealthy" {
		t.Fatalf("second failing instance: %+v", planned)
	}
	metrics := get(t, "http://"+e.httpAddr+"/metrics")
	if !strings.Contains(metrics, `immutd_fleet_instances{fleet="web",state="quarantined"} 1`) || !strings.Contains(metrics, `immutd_quarantine_max{fleet="web"} 1`) {
		t.Fatalf("metrics do not show the full quarantine:\n%s", grepLines(metrics, "quarantine"))
	}
	// Without a quarantine in the file, the quarantined instance goes.
	e.writeFleet("web.hcl", fleetFile("web", 2, "v1", ""))
	ev := e.waitTerminated("web", first.ID)
	planned = findEvent(e.eventsAfter(mark), state.ActionTerminatePlanned, first.ID)
	if planned == nil || planned.Reason != "quarantine_expired" {
		t.Fatalf("end of the quarantine: %+v (terminated %+v)", planned, ev)
	}
	e.waitHealthy("web", 2, "", 60*time.Second, first.ID, second.ID)
}

// waitFor2Healthy waits for the fleet's two healthy instances besides
// the quarantined one.
func (e *env) waitFor2Healthy(t *testing.T, _ *env, quarantined string) api.Fleet {
	t.Helper()
	var f api.Fleet
	e.waitFor("two healthy instances besides the quarantined one", 60*time.Second, func() (bool, string) {
		f = e.fleet("web")
		healthy := 0
		for _, in := range f.Instances {
			if in.ID != quarantined && in.State == "healthy" {
				healthy++
			}
		}
		return healthy == 2 && stateOf(f, quarantined) == "quarantined", describe(f)
	})
	return f
}

// TestLaunchFailuresAreCapped: a fleet whose instances never become
// healthy stops launching after remediation.max_launch_failures in a row,
// says so, and starts again after `immutd fleet retry`.
func TestLaunchFailuresAreCapped(t *testing.T) {
	e := newEnv(t, envOpts{})
	src := fleetFile("web", 1, "v1", "  remediation {\n    max_launch_failures = 2\n  }\n")
	src = strings.Replace(src, `path                = "/healthz"`, `path                = "/no-such-page"`, 1)
	src = strings.Replace(src, `startup_timeout     = "15s"`, `startup_timeout     = "1s"`, 1)
	e.writeFleet("web.hcl", src)
	e.start()
	e.waitFor("launches to be capped", 90*time.Second, func() (bool, string) {
		f := e.fleet("web")
		b := blockedBy(f, "launch_capped")
		return b != nil && strings.Contains(b.Detail, "max_launch_failures 2") && len(f.Instances) == 0, describe(f)
	})
	mark := e.lastSeq()
	e.waitPasses(5)
	for _, ev := range e.eventsAfter(mark) {
		if ev.Action == state.ActionLaunchPlanned {
			t.Fatalf("launched while capped: %+v", ev)
		}
	}
	if out, code := e.cli("fleet", "retry", "web"); code != 0 || !strings.Contains(out, "launch failures cleared") {
		t.Fatalf("fleet retry (exit %d): %s", code, out)
	}
	e.waitEvent(mark, 30*time.Second, func(ev state.Event) bool { return ev.Action == state.ActionLaunchPlanned && ev.Fleet == "web" })
}
