package agent

import (
	"context"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/immutd/immutd/internal/api"
	"github.com/immutd/immutd/internal/state"
)

func TestAgentKeepsAFleetAtSizeAndReplacesAnUnhealthyInstance(t *testing.T) {
	ta := newAgent(t, agentOpts{})
	ta.waitLeader()
	ta.fleet("web", webFleet(2, "app:v1"))
	waitFor(t, "2 healthy instances", func() bool { return ta.healthyCount("web") == 2 })

	st := ta.status()
	if !st.IsLeader || st.Stale || st.Config.Error != "" || !st.Config.OK || st.Config.Fleets != 1 {
		t.Fatalf("status of a healthy single agent: leader %v stale %v config %+v", st.IsLeader, st.Stale, st.Config)
	}
	f, _ := ta.fleetStatus("web")
	if f.Desired != 2 || len(f.Instances) != 2 || f.ImageDigest != "sha256:"+strings.Repeat("a", 64) {
		t.Fatalf("fleet web: %+v", f)
	}
	for _, in := range f.Instances {
		if in.State != "healthy" || !in.UpToDate || in.Address == "" || len(in.HealthyOn) != 1 || in.HealthyOn[0] != "node-1" {
			t.Fatalf("instance %+v", in)
		}
	}
	if n := len(ta.events("launched")); n != 2 {
		t.Fatalf("%d launched events, want 2", n)
	}

	// One instance starts failing its check: it is replaced, surge-first.
	sick := f.Instances[0].ID
	ta.prov.SetHealthy(sick, false)
	waitFor(t, "the unhealthy instance to be replaced", func() bool {
		running := ta.prov.Running()
		return !slices.Contains(running, sick) && len(running) == 2 && ta.healthyCount("web") == 2 && len(ta.events("terminated")) == 1
	})
	var reasons []string
	for _, e := range ta.events("terminated") {
		if e.InstanceID == sick {
			reasons = append(reasons, e.Reason)
		}
	}
	if !slices.Equal(reasons, []string{"unhealthy"}) {
		t.Fatalf("the sick instance was terminated for %q, want once for unhealthy; events: %+v", reasons, ta.a.Events(context.Background(), 0, "", 0))
	}

	// What the operator reads: the API and the metrics.
	var fleets []api.Fleet
	ta.getJSON("/v1/fleets", &fleets)
	if len(fleets) != 1 || fleets[0].Name != "web" {
		t.Fatalf("/v1/fleets: %+v", fleets)
	}
	var insts []api.Instance
	ta.getJSON("/v1/instances?fleet=web", &insts)
	if len(insts) != 2 {
		t.Fatalf("/v1/instances: %d instances", len(insts))
	}
	code, metrics := ta.call(http.MethodGet, "/metrics", "", false)
	for _, want := range []string{`immutd_cluster_is_leader 1`, `immutd_fleet_desired_instances{fleet="web"} 2`, `immutd_reconcile_passes_total{result="ok"}`,
		`immutd_replacements_total{fleet="web",reason="unhealthy"} 1`} {
		if code != http.StatusOK || !strings.Contains(metrics, want) {
			t.Fatalf("/metrics (%d) lacks %q", code, want)
		}
	}
	if code, body := ta.call(http.MethodGet, "/readyz", "", false); code != http.StatusOK {
		t.Fatalf("/readyz: %d %s", code, body)
	}
}

func TestAgentRejectsBadFleetFilesAndKeepsTheLastGoodState(t *testing.T) {
	ta := newAgent(t, agentOpts{})
	ta.waitLeader()
	ta.fleet("web", webFleet(1, "app:v1"))
	waitFor(t, "1 healthy instance", func() bool { return ta.healthyCount("web") == 1 })
	committed := func() (gen uint64, size int) {
		ta.a.node.Read(func(st *state.State) {
			gen = st.Generation
			if f := st.Fleets["web"]; f != nil {
				size = f.Spec.Size
			}
		})
		return
	}
	gen, _ := committed()

	// A typo: the whole set is refused, nothing changes, and the
	// operator is told where.
	ta.fleet("web", strings.Replace(webFleet(3, "app:v1"), "size", "sise", 1))
	waitFor(t, "the bad file to be rejected and the event recorded", func() bool {
		return ta.status().Config.Error != "" && len(ta.events("config_rejected")) == 1
	})
	st := ta.status()
	if !strings.Contains(st.Config.Error, "web.hcl") || !strings.Contains(st.Config.Error, "sise") || st.Config.Rejected != 1 || st.Config.OK {
		t.Fatalf("config status after a bad file: %+v", st.Config)
	}
	if g, size := committed(); g != gen || size != 1 {
		t.Fatalf("a rejected file changed the desired state: generation %d→%d, size %d", gen, g, size)
	}
	if len(ta.prov.Running()) != 1 {
		t.Fatalf("running %v after a rejected file", ta.prov.Running())
	}

	// Fixed: committed, scaled.
	ta.fleet("web", webFleet(2, "app:v1"))
	waitFor(t, "2 healthy instances", func() bool { return ta.healthyCount("web") == 2 })
	if st := ta.status(); !st.Config.OK || st.Config.Error != "" || st.Diverged {
		t.Fatalf("config status after the fix: %+v diverged %v", st.Config, st.Diverged)
	}
}

func TestAgentDrainsAnUnconfiguredFleetOnRequest(t *testing.T) {
	ta := newAgent(t, agentOpts{})
	ta.waitLeader()
	ta.fleet("web", webFleet(2, "app:v1"))
	ta.fleet("api", webFleet(1, "api:v1"))
	waitFor(t, "both fleets healthy", func() bool { return ta.healthyCount("web") == 2 && ta.healthyCount("api") == 1 })

	// Changing state needs the token.
	if code, body := ta.call(http.MethodPost, "/v1/fleets/api/drain", "", false); code != http.StatusUnauthorized {
		t.Fatalf("drain without a token: %d %s", code, body)
	}
	// A configured fleet is not drained: remove its file first.
	if code, body := ta.call(http.MethodPost, "/v1/fleets/api/drain", "", true); code != http.StatusConflict || !strings.Contains(body, "api") {
		t.Fatalf("drain of a configured fleet: %d %s", code, body)
	}
	if err := os.Remove(filepath.Join(ta.fleets, "api.hcl")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "api to be unconfigured", func() bool {
		f, ok := ta.fleetStatus("api")
		return ok && f.Unconfigured && len(f.Blocked) > 0 && f.Blocked[0].Cause == "unconfigured"
	})
	if n := len(ta.prov.Running()); n != 3 {
		t.Fatalf("an unconfigured fleet lost instances without a drain: %d running", n)
	}
	if code, body := ta.call(http.MethodPost, "/v1/fleets/no-such/drain", "", true); code == http.StatusOK {
		t.Fatalf("drain of an unknown fleet: %d %s", code, body)
	}
	if code, body := ta.call(http.MethodPost, "/v1/fleets/api/drain", "", true); code != http.StatusOK {
		t.Fatalf("drain: %d %s", code, body)
	}
	waitFor(t, "api to be forgotten", func() bool { _, ok := ta.fleetStatus("api"); return !ok && len(ta.prov.Running()) == 2 })
	if len(ta.events("drain_started")) != 1 || len(ta.events("fleet_forgotten")) != 1 {
		t.Fatal("no drain_started and fleet_forgotten events")
	}
	if ta.healthyCount("web") != 2 {
		t.Fatal("draining api touched web")
	}
}

func TestAgentResolveRepinsAMovedReference(t *testing.T) {
	ta := newAgent(t, agentOpts{})
	ta.waitLeader()
	ta.fleet("web", webFleet(1, "app:v1"))
	waitFor(t, "1 healthy instance", func() bool { return ta.healthyCount("web") == 1 })
	old := ta.prov.Running()[0]

	v2 := "sha256:" + strings.Repeat("c", 64)
	ta.prov.SetDigest(v2)
	if code, body := ta.call(http.MethodPost, "/v1/fleets/web/resolve", "", true); code != http.StatusOK {
		t.Fatalf("resolve: %d %s", code, body)
	}
	waitFor(t, "the rollout to the re-pinned image", func() bool {
		f, _ := ta.fleetStatus("web")
		r := ta.prov.Running()
		return f.ImageDigest == v2 && len(r) == 1 && r[0] != old && ta.healthyCount("web") == 1
	})
	if code, body := ta.call(http.MethodPost, "/v1/fleets/nope/resolve", "", true); code == http.StatusOK || !strings.Contains(body, "not known") {
		t.Fatalf("resolve of an unknown fleet: %d %s", code, body)
	}
	if code, _ := ta.call(http.MethodPost, "/v1/fleets/Bad!Name/resolve", "", true); code == http.StatusOK {
		t.Fatal("resolve of a bad name succeeded")
	}
}

func TestAgentRestartFindsItsInstancesAgain(t *testing.T) {
	ta := newAgent(t, agentOpts{})
	ta.waitLeader()
	ta.fleet("web", webFleet(2, "app:v1"))
	waitFor(t, "2 healthy instances", func() bool { return ta.healthyCount("web") == 2 })
	before := ta.prov.Running()
	if err := ta.stop(); err != nil {
		t.Fatalf("stop: %v", err)
	}
	if !ta.logged("agent stopped") {
		t.Fatal("no 'agent stopped' log")
	}
	ta.start()
	ta.waitLeader()
	waitFor(t, "2 healthy instances after the restart", func() bool { return ta.healthyCount("web") == 2 })
	if after := ta.prov.Running(); !slices.Equal(before, after) {
		t.Fatalf("a restart replaced instances: %v → %v", before, after)
	}
	launched, terminated, _, _ := ta.prov.Calls()
	if len(launched) != 2 || len(terminated) != 0 {
		t.Fatalf("after a restart: launched %v terminated %v", launched, terminated)
	}
}

func TestAgentReloadAppliesWhatCanChangeAndNamesTheRest(t *testing.T) {
	ta := newAgent(t, agentOpts{})
	ta.waitLeader()
	conf, err := os.ReadFile(ta.conf)
	if err != nil {
		t.Fatal(err)
	}
	next := strings.Replace(string(conf), `reconcile_interval = "1s"`, "reconcile_interval = \"2s\"\nauto_drain_removed_fleets = true\nlimits {\n  max_instances = 7\n}", 1)
	next = strings.Replace(next, `log_level  = "debug"`, `log_level  = "info"`, 1)
	next = strings.Replace(next, `data_dir   = "data"`, `data_dir   = "data2"`, 1)
	ta.write(next)
	ta.reload <- struct{}{}
	waitFor(t, "the reload", func() bool { return ta.logged("agent config reloaded") })
	e := ta.logs.FilterMessage("agent config reloaded").All()[0].ContextMap()
	if e["reconcile_interval"] != 2*time.Second || e["max_instances"] != int64(7) || e["auto_drain_removed_fleets"] != true ||
		!slices.Equal(e["changed_need_restart"].([]any), []any{"data_dir", "api", "provider"}) {
		t.Fatalf("reload log: %v", e)
	}
	if s := ta.a.leaderSettings(); s.Interval.String() != "2s" || s.Limits.MaxInstances != 7 {
		t.Fatalf("settings after reload: %+v", s)
	}

	// A broken file is refused and the running configuration stays.
	ta.write("this is not hcl {")
	ta.reload <- struct{}{}
	waitFor(t, "the refusal", func() bool { return ta.logged("agent config reload rejected") })
	if s := ta.a.leaderSettings(); s.Interval.String() != "2s" {
		t.Fatalf("a refused reload changed settings: %+v", s)
	}
}

func TestAgentFaultFileCutsItsProbes(t *testing.T) {
	ta := newAgent(t, agentOpts{})
	ta.waitLeader()
	ta.fleet("web", webFleet(1, "app:v1"))
	waitFor(t, "1 healthy instance", func() bool { return ta.healthyCount("web") == 1 })
	if err := os.MkdirAll(filepath.Dir(ta.a.faultFile()), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(ta.a.faultFile(), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the probes to fail", func() bool {
		for _, j := range ta.a.Judge(ta.a.prober.Verdicts()[ta.prov.Running()[0]].Since) {
			for _, ev := range j.Evidence {
				if strings.Contains(ev, "fault injection") {
					return true
				}
			}
		}
		return false
	})
	if !ta.logged("probe fault injection changed") {
		t.Fatal("the fault was not logged")
	}
}

func TestAgentTokenFileIsMadeOnceAndPrivate(t *testing.T) {
	ta := newAgent(t, agentOpts{})
	fi, err := os.Stat(ta.a.TokenFile())
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 || len(ta.a.Token()) != 64 {
		t.Fatalf("token file mode %v, token length %d", fi.Mode().Perm(), len(ta.a.Token()))
	}
	tok := ta.a.Token()
	if err := ta.stop(); err != nil {
		t.Fatal(err)
	}
	ta.start()
	if ta.a.Token() != tok {
		t.Fatal("a restart made a new token")
	}
	if err := createToken(ta.a.TokenFile()); err != nil {
		t.Fatal(err)
	}
	if got, _ := readToken("t", ta.a.TokenFile()); got != tok {
		t.Fatal("createToken overwrote an existing token")
	}
}

func TestAgentLeadershipEndsItsTermBeforeStopping(t *testing.T) {
	ta := newAgent(t, agentOpts{})
	ta.waitLeader()
	ta.fleet("web", webFleet(1, "app:v1"))
	waitFor(t, "1 healthy instance", func() bool { return ta.healthyCount("web") == 1 })
	if ta.a.currentTerm() == nil || ta.a.pilot() != nil {
		t.Fatal("a single agent leads without a term, or runs autopilot")
	}
	if err := ta.stop(); err != nil {
		t.Fatal(err)
	}
	msgs := []string{}
	for _, e := range ta.logs.All() {
		msgs = append(msgs, e.Message)
	}
	lost, stopped := slices.Index(msgs, "leadership lost; leader work stopped"), slices.Index(msgs, "agent stopped")
	if lost < 0 || stopped < lost {
		t.Fatalf("log order: leader work stopped at %d, agent stopped at %d", lost, stopped)
	}
	if ta.a.currentTerm() != nil {
		t.Fatal("the term outlived the agent")
	}
}

func TestLogFormat(t *testing.T) {
	for _, c := range []struct {
		terminal bool
		env      string
		want     string
	}{{true, "", "console"}, {false, "", "json"}, {true, "json", "json"}, {false, "console", "console"}} {
		if got, err := logFormat(c.terminal, c.env); err != nil || got != c.want {
			t.Errorf("logFormat(%v, %q) = %q, %v; want %q", c.terminal, c.env, got, err, c.want)
		}
	}
	if _, err := logFormat(false, "yaml"); err == nil {
		t.Error("IMMUTD_LOG_FORMAT=yaml accepted")
	}
}

// TestLaunchErrorsGoToFailingFleetsOnly: the status names the last launch
// error of a fleet whose launches keep failing, on a copy of the shared
// status, and of no other fleet.
func TestLaunchErrorsGoToFailingFleetsOnly(t *testing.T) {
	shared := []api.Fleet{{Name: "web", LaunchFailures: 2}, {Name: "api"}}
	errs := map[string]string{"web": "exec: no such file", "api": "an old failure"}
	got := withLaunchErrors(shared, errs)
	if got[0].LastLaunchError != "exec: no such file" || got[1].LastLaunchError != "" {
		t.Fatalf("fleets %+v", got)
	}
	if shared[0].LastLaunchError != "" {
		t.Fatal("the shared status was changed")
	}
}
