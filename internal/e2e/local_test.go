package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/immutd/immutd/internal/api"
)

// TestRolloutNeverDropsBelowDesired changes the image and samples the
// fleet all along: at no settled sample are fewer than size instances
// both judged healthy and answering our own request, and never more than
// size+max_surge instance processes exist. The app answers 503 for its
// first 300ms, like one warming up, so a new instance is not ready the
// moment it runs: an old one stopped too early shows, and each step of
// the rollout lasts long enough to be sampled many times.
func TestRolloutNeverDropsBelowDesired(t *testing.T) {
	e := newEnv(t, envOpts{})
	warming := func(version string) string {
		return strings.Replace(fleetFile("web", 3, version, ""), `stop_grace = "2s"`,
			`stop_grace = "2s"
    args       = ["-ready-after", "300ms"]`, 1)
	}
	e.writeFleet("web.hcl", warming("v1"))
	e.start()
	e.waitHealthy("web", 3, "", 30*time.Second)
	v1 := e.fleet("web").ImageDigest

	e.writeFleet("web.hcl", warming("v2"))
	deadline := time.Now().Add(60 * time.Second)
	samples, midway, unsettled, maxProcs := 0, 0, 0, 0
	for {
		c := e.checkServing("web")
		procs := len(processesUnder(e.dataDir))
		maxProcs = max(maxProcs, procs)
		if procs > 4 {
			t.Fatalf("%d instance processes, more than size 3 + max_surge 1: %s", procs, describe(c.after))
		}
		f := c.after
		mixed := false
		for _, in := range f.Instances {
			mixed = mixed || in.ImageDigest != f.Instances[0].ImageDigest
		}
		if len(c.stopped) > 0 {
			t.Logf("instances stopped while they were asked, as the rollout terminated them: %v", c.stopped)
		}
		if !c.settled {
			unsettled++
		} else {
			samples++
			if mixed {
				midway++
			}
			if c.healthy < 3 || c.serving < 3 {
				t.Fatalf("sample %d: %d instances healthy, %d of them answering, during the rollout: %s; not answering: %v",
					samples, c.healthy, c.serving, describe(f), c.silent)
			}
		}
		done := f.ImageDigest != v1
		for _, in := range f.Instances {
			done = done && in.ImageDigest == f.ImageDigest && in.State == "healthy"
		}
		if done && len(f.Instances) == 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("rollout did not finish in 60s: %s", describe(f))
		}
		time.Sleep(5 * time.Millisecond)
	}
	// Three steps of at least 300ms: a run that did not sample them many
	// times with old and new instances side by side checked little.
	if midway < 10 {
		t.Fatalf("only %d settled samples with old and new instances (%d settled in all, %d unsettled): the rollout was not observed", midway, samples, unsettled)
	}
	t.Logf("rollout finished: %d settled samples (%d with old and new instances side by side), %d taken across a health change, at most %d processes", samples, midway, unsettled, maxProcs)
	n := 0
	for _, ev := range e.events() {
		if ev.Action == "terminated" && ev.Reason == "drift_image" {
			n++
		}
	}
	if n != 3 {
		t.Fatalf("want 3 instances terminated for drift_image, got %d", n)
	}
}

func TestBrokenFleetFileChangesNothing(t *testing.T) {
	e := newEnv(t, envOpts{})
	e.writeFleet("web.hcl", fleetFile("web", 2, "v1", ""))
	e.start()
	before := ids(e.waitHealthy("web", 2, "", 30*time.Second))
	gen := e.status().Generation

	broken := strings.Replace(fleetFile("web", 5, "v2", ""), "size     = 5", "size     = 5 +", 1)
	e.writeFleet("web.hcl", broken)
	var st api.Status
	e.waitFor("the broken file to be reported", 10*time.Second, func() (bool, string) {
		st = e.status()
		return !st.Config.OK && st.Config.Error != "", fmt.Sprintf("%+v", st.Config)
	})
	if !strings.Contains(st.Config.Error, filepath.Join(e.fleetsDir, "web.hcl")+":2:") {
		t.Fatalf("error does not name file:line: %q", st.Config.Error)
	}
	// Nothing changes because of it.
	time.Sleep(3 * time.Second)
	st = e.status()
	if st.Generation != gen {
		t.Fatalf("desired generation moved from %d to %d on an invalid file", gen, st.Generation)
	}
	f := e.fleet("web")
	if got := ids(f); len(got) != 2 || !got[keys(before)[0]] || !got[keys(before)[1]] {
		t.Fatalf("instances changed after an invalid edit: before %v, now %s", keys(before), describe(f))
	}
	if findEvent(e.events(), "config_rejected", "") == nil {
		t.Fatal("no config_rejected event")
	}
	metrics := get(t, "http://"+e.httpAddr+"/metrics")
	if !strings.Contains(metrics, "immutd_config_last_reload_successful 0") || !strings.Contains(metrics, "immutd_config_reload_failures_total 1") {
		t.Fatalf("reload metrics do not show the failure")
	}
	out, code := runCLI("validate", e.fleetsDir)
	if code == 0 || !strings.Contains(out, "web.hcl:2:") {
		t.Fatalf("validate: exit %d, output %q", code, out)
	}
	// Fixing the file applies again, and says so in the event log.
	e.writeFleet("web.hcl", fleetFile("web", 3, "v1", ""))
	e.waitHealthy("web", 3, "", 30*time.Second)
	if ev := findEvent(e.events(), "config_accepted", ""); ev == nil || ev.Reason != "config_fixed" {
		t.Fatalf("no config_accepted event after the fix: %+v", ev)
	}
	if out, code := runCLI("validate", e.fleetsDir); code != 0 {
		t.Fatalf("validate of a good dir: exit %d: %s", code, out)
	}
}

// TestKill9AgentLaunchesNoDuplicates crashes the agent repeatedly while it
// scales up and rolls, restarts it, and checks that every instance id was
// launched at most once and the fleet converges to exactly size
// instances.
func TestKill9AgentLaunchesNoDuplicates(t *testing.T) {
	e := newEnv(t, envOpts{})
	e.writeFleet("web.hcl", fleetFile("web", 2, "v1", ""))
	e.start()
	e.waitHealthy("web", 2, "", 30*time.Second)

	e.writeFleet("web.hcl", fleetFile("web", 5, "v2", ""))
	for i, delay := range []time.Duration{30 * time.Millisecond, 150 * time.Millisecond, 400 * time.Millisecond, 80 * time.Millisecond, 250 * time.Millisecond} {
		time.Sleep(delay)
		e.kill9()
		if n := len(processesUnder(e.dataDir)); n > 6 {
			t.Fatalf("crash %d: %d instance processes, more than size 5 + max_surge 1", i, n)
		}
		e.start()
	}
	f := e.waitHealthy("web", 5, "", 60*time.Second)
	v2 := f.ImageDigest
	for _, in := range f.Instances {
		if in.ImageDigest != v2 {
			t.Fatalf("instance %s on %s, want %s", in.ID, in.ImageDigest, v2)
		}
	}
	// Give stray launches a moment to show up, then count processes.
	time.Sleep(2 * time.Second)
	if n := len(processesUnder(e.dataDir)); n != 5 {
		t.Fatalf("%d instance processes after convergence, want exactly 5", n)
	}
	launched := map[string]int{}
	for _, ev := range e.events() {
		if ev.Action == "launched" {
			launched[ev.InstanceID]++
		}
	}
	for id, n := range launched {
		if n > 1 {
			t.Fatalf("instance %s launched %d times", id, n)
		}
	}
	st := e.status()
	if len(st.Fleets) != 1 || len(st.Fleets[0].Instances) != 5 {
		t.Fatalf("status after convergence: %s", describe(st.Fleets[0]))
	}
}

func TestRemovedFleetKeepsRunningUntilDrained(t *testing.T) {
	e := newEnv(t, envOpts{})
	e.writeFleet("web.hcl", fleetFile("web", 2, "v1", ""))
	e.writeFleet("api.hcl", fleetFile("api", 1, "v1", ""))
	e.start()
	e.waitHealthy("web", 2, "", 30*time.Second)
	e.waitHealthy("api", 1, "", 30*time.Second)

	if err := os.Remove(filepath.Join(e.fleetsDir, "api.hcl")); err != nil {
		t.Fatal(err)
	}
	e.waitFor("api to be reported unconfigured", 10*time.Second, func() (bool, string) {
		f := e.fleet("api")
		return f.Unconfigured, describe(f)
	})
	time.Sleep(2 * time.Second)
	f := e.fleet("api")
	if len(f.Instances) != 1 || f.Instances[0].State != "healthy" {
		t.Fatalf("removed fleet's instance was touched: %s", describe(f))
	}
	if len(f.Blocked) == 0 || f.Blocked[0].Cause != "unconfigured" {
		t.Fatalf("status does not say the fleet is unconfigured: %+v", f.Blocked)
	}
	if out, code := e.cli("fleet", "drain", "web"); code == 0 {
		t.Fatalf("draining a configured fleet must be refused, got: %s", out)
	}
	if out, code := e.cli("fleet", "drain", "api"); code != 0 {
		t.Fatalf("drain api: exit %d: %s", code, out)
	}
	e.waitFor("api to be drained and forgotten", 30*time.Second, func() (bool, string) {
		if x, ok := fleetOf(e.status(), "api"); ok {
			return false, describe(x)
		}
		return true, ""
	})
	e.waitHealthy("web", 2, "", 10*time.Second)
	if n := len(processesUnder(e.dataDir)); n != 2 {
		t.Fatalf("%d instance processes after draining api, want web's 2", n)
	}
}

func TestStatusCommandIsReadable(t *testing.T) {
	e := newEnv(t, envOpts{})
	e.writeFleet("web.hcl", fleetFile("web", 1, "v1", ""))
	e.start()
	e.waitHealthy("web", 1, "", 30*time.Second)
	out, code := runCLI("status", "-addr", e.httpAddr)
	if code != 0 {
		t.Fatalf("status exit %d: %s", code, out)
	}
	for _, want := range []string{"(leader)", "fleet files: ok, 1 fleet ", "FLEET", "web", "healthy", "RECENT EVENTS", "TIME", "launched"} {
		if !strings.Contains(out, want) {
			t.Errorf("status output lacks %q:\n%s", want, out)
		}
	}
	// It fits a terminal of 120 columns, as under watch; -wide has it all.
	for _, line := range strings.Split(out, "\n") {
		if n := utf8.RuneCountInString(line); n > 120 {
			t.Errorf("a status line of %d columns: %q", n, line)
		}
	}
	digest := e.fleet("web").ImageDigest
	if strings.Contains(out, digest) {
		t.Errorf("status shows the whole digest %s; it should be cut", digest)
	}
	if wide, code := runCLI("status", "-wide", "-addr", e.httpAddr); code != 0 || !strings.Contains(wide, digest) {
		t.Errorf("status -wide: exit %d, lacks the whole digest %s:\n%s", code, digest, wide)
	}
	if out, code := runCLI("version"); code != 0 || !strings.Contains(out, "immutd e2e") {
		t.Errorf("version: exit %d: %s", code, out)
	}
}

// TestAPITokenAndTLS: an agent serving its API over HTTPS with a bearer
// token: reads work with the CA, state changes need the token, and the
// CLI passes both.
func TestAPITokenAndTLS(t *testing.T) {
	dir := t.TempDir()
	makeCerts(t, dir, "api")
	token := filepath.Join(dir, "token")
	if err := os.WriteFile(token, []byte("0123456789abcdef-e2e\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, envOpts{extra: fmt.Sprintf("api {\n  token_file = %q\n  tls_cert_file = %q\n  tls_key_file = %q\n}\n",
		token, filepath.Join(dir, "api.pem"), filepath.Join(dir, "api-key.pem"))})
	e.writeFleet("web.hcl", fleetFile("web", 1, "v1", ""))
	e.writeFleet("old.hcl", fleetFile("old", 1, "v1", ""))
	e.launch()
	url := "https://" + e.httpAddr
	ca := filepath.Join(dir, "ca.pem")
	e.waitFor("the HTTPS API", 30*time.Second, func() (bool, string) {
		out, code := runCLI("status", "-addr", url, "-ca-file", ca)
		return code == 0 && strings.Contains(out, "old"), out
	})
	if err := os.Remove(filepath.Join(e.fleetsDir, "old.hcl")); err != nil {
		t.Fatal(err)
	}
	e.waitFor("old to be unconfigured", 10*time.Second, func() (bool, string) {
		out, _ := runCLI("status", "-addr", url, "-ca-file", ca)
		return strings.Contains(out, "NOT CONFIGURED"), out
	})
	if out, code := runCLI("fleet", "drain", "old", "-addr", url, "-ca-file", ca); code == 0 || !strings.Contains(out, "401") {
		t.Fatalf("drain without the token: exit %d: %s", code, out)
	}
	if out, code := runCLI("status", "-addr", "http://"+e.httpAddr); code == 0 {
		t.Fatalf("plain HTTP to an HTTPS API worked: %s", out)
	}
	if out, code := runCLI("fleet", "drain", "old", "-addr", url, "-ca-file", ca, "-token-file", token); code != 0 {
		t.Fatalf("drain with the token: exit %d: %s", code, out)
	}
}
