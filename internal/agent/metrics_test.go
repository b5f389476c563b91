package agent

import (
	"bufio"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/immutd/immutd/internal/reconcile"
	"github.com/immutd/immutd/internal/state"
)

// Tests of what the agent exports on /metrics for alerting (issue 12).

// scrape reads the agent's /metrics and returns each sample line's value
// by its series (name and labels as exposed).
func (ta *testAgent) scrape() (map[string]float64, string) {
	ta.t.Helper()
	code, body := ta.call(http.MethodGet, "/metrics", "", false)
	if code != http.StatusOK {
		ta.t.Fatalf("/metrics: %d", code)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(strings.NewReader(body))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			ta.t.Fatalf("/metrics line %q: %v", line, err)
		}
		out[line[:i]] = v
	}
	return out, body
}

// waitMetric waits until the series has the value.
func (ta *testAgent) waitMetric(series string, want float64) {
	ta.t.Helper()
	var got float64
	var ok bool
	waitFor(ta.t, series+" to be "+strconv.FormatFloat(want, 'g', -1, 64), func() bool {
		m, _ := ta.scrape()
		got, ok = m[series]
		return ok && got == want
	})
}

func TestMetricNamesCoverEverySeriesTheAgentCanExport(t *testing.T) {
	names, err := MetricNames()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		// vectors that have no series until a fleet exists
		"immutd_fleet_instances", "immutd_remediation_blocked", "immutd_intents_finished_total", "immutd_fleet_launch_failures",
		"immutd_provider_call_duration_seconds_bucket", "immutd_traffic_step_duration_seconds_count",
		// both reload gauges
		"immutd_config_last_reload_successful", "immutd_agent_config_last_reload_successful", "immutd_agent_config_reload_failures_total",
		// raft, Prometheus style
		"immutd_raft_state", "immutd_raft_peers", "immutd_raft_voters", "immutd_raft_has_leader", "immutd_raft_last_index",
		"immutd_raft_commit_duration_seconds_bucket", "immutd_raft_fsm_apply_duration_seconds_count", "immutd_raft_leader_changes_total",
		"immutd_raft_apply_total", "immutd_raft_boltdb_store_logs_duration_seconds_sum",
		// registered by the prober and the runtime collectors
		"immutd_probe_duration_seconds_bucket", "go_goroutines", "process_resident_memory_bytes", "go_gc_duration_seconds_count",
	} {
		if !slices.Contains(names, want) {
			t.Errorf("MetricNames lacks %s", want)
		}
	}
	valid := regexp.MustCompile(`^[a-z_:][a-z0-9_:]*$`)
	for _, n := range names {
		if !valid.MatchString(n) {
			t.Errorf("metric name %q is not snake_case", n)
		}
	}
}

func TestAgentFileReloadShowsInTheMetrics(t *testing.T) {
	ta := newAgent(t, agentOpts{})
	ta.waitLeader()
	m, _ := ta.scrape()
	if m["immutd_agent_config_last_reload_successful"] != 1 || m["immutd_agent_config_reload_failures_total"] != 0 ||
		m["immutd_agent_config_last_reload_success_timestamp_seconds"] <= 0 {
		t.Fatalf("after the start: %v", pick(m, "immutd_agent_config_"))
	}
	good, err := os.ReadFile(ta.conf)
	if err != nil {
		t.Fatal(err)
	}
	ta.write("this is not hcl {")
	ta.reload <- struct{}{}
	ta.waitMetric("immutd_agent_config_reload_failures_total", 1)
	m, _ = ta.scrape()
	if m["immutd_agent_config_last_reload_successful"] != 0 {
		t.Fatalf("after a rejected reload: %v", pick(m, "immutd_agent_config_"))
	}
	// The fleet files are another matter: their load is fine.
	if m["immutd_config_last_reload_successful"] != 1 {
		t.Fatalf("a rejected agent file marked the fleet files: %v", pick(m, "immutd_config_"))
	}
	ta.write(string(good))
	ta.reload <- struct{}{}
	ta.waitMetric("immutd_agent_config_last_reload_successful", 1)
	if m, _ := ta.scrape(); m["immutd_agent_config_reload_failures_total"] != 1 {
		t.Fatalf("after a good reload: %v", pick(m, "immutd_agent_config_"))
	}
}

// value is the value of a counter or gauge.
func value(t *testing.T, c prometheus.Metric) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	switch {
	case m.Counter != nil:
		return m.Counter.GetValue()
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	}
	t.Fatalf("%v is neither a counter nor a gauge", c.Desc())
	return 0
}

// count is how many series a collector has.
func count(c prometheus.Collector) int {
	ch := make(chan prometheus.Metric)
	go func() { c.Collect(ch); close(ch) }()
	n := 0
	for range ch {
		n++
	}
	return n
}

// pick is the series of m whose names start with prefix, for messages.
func pick(m map[string]float64, prefix string) map[string]float64 {
	out := map[string]float64{}
	for k, v := range m {
		if strings.HasPrefix(k, prefix) {
			out[k] = v
		}
	}
	return out
}

func TestRaftMetricsAreStableAndInSeconds(t *testing.T) {
	ta := newAgent(t, agentOpts{})
	ta.waitLeader()
	ta.fleet("web", webFleet(1, "app:v1"))
	waitFor(t, "1 healthy instance", func() bool { return ta.healthyCount("web") == 1 })
	m, body := ta.scrape()
	for series, want := range map[string]float64{
		`immutd_raft_state{state="leader"}`:    1,
		`immutd_raft_state{state="follower"}`:  0,
		`immutd_raft_state{state="candidate"}`: 0,
		`immutd_raft_state{state="shutdown"}`:  0,
		`immutd_raft_has_leader`:               1,
		`immutd_raft_peers`:                    1,
		`immutd_raft_voters`:                   1,
		`immutd_raft_leader_changes_total`:     1,
		`immutd_raft_fsm_pending`:              0,
	} {
		if got, ok := m[series]; !ok || got != want {
			t.Errorf("%s = %v (exported %v), want %v", series, got, ok, want)
		}
	}
	if m["immutd_raft_commit_index"] < 2 || m["immutd_raft_applied_index"] < 2 || m["immutd_raft_last_index"] < m["immutd_raft_commit_index"] || m["immutd_raft_term"] < 1 {
		t.Errorf("raft indexes: %v", pick(m, "immutd_raft_"))
	}
	// Commits happened (the fleet, the launch): the timings have counts,
	// and their buckets are in seconds.
	for _, h := range []string{"immutd_raft_commit_duration_seconds", "immutd_raft_fsm_apply_duration_seconds", "immutd_raft_boltdb_store_logs_duration_seconds"} {
		if m[h+"_count"] < 1 {
			t.Errorf("%s_count = %v", h, m[h+"_count"])
		}
		if m[h+"_sum"]/m[h+"_count"] > 10 {
			t.Errorf("%s averages %v: not seconds", h, m[h+"_sum"]/m[h+"_count"])
		}
	}
	if m["immutd_raft_apply_total"] < 1 {
		t.Errorf("immutd_raft_apply_total = %v", m["immutd_raft_apply_total"])
	}
	for _, line := range strings.Split(body, "\n") {
		if strings.HasPrefix(line, "#") {
			continue
		}
		if strings.HasSuffix(line, " NaN") {
			t.Errorf("NaN sample: %s", line)
		}
		if strings.HasPrefix(line, "immutd_raft") && regexp.MustCompile(`^[a-z0-9_]*[A-Z]`).MatchString(line) {
			t.Errorf("camelCase raft series: %s", line)
		}
	}
}

func TestLaunchFailuresHaveAFleet(t *testing.T) {
	m := newMetrics()
	m.initFleet("web")
	l := leaderMetrics{m: m}
	if got := value(t, m.intentsFinished.WithLabelValues("web", "launch", "failed")); got != 0 {
		t.Fatalf("initial failed launches of web: %v", got)
	}
	l.Finished(&state.Intent{Fleet: "web", Kind: state.Launch}, "local", state.Failed, time.Second)
	l.Finished(&state.Intent{Fleet: "api", Kind: state.Launch}, "local", state.Done, time.Second)
	if got := value(t, m.intentsFinished.WithLabelValues("web", "launch", "failed")); got != 1 {
		t.Fatalf("failed launches of web: %v", got)
	}
	m.forgetFleet("web")
	if n := count(m.intentsFinished); n != 1 {
		t.Fatalf("%d intent series left after web was forgotten, want api's 1", n)
	}
}

// TestLaunchBackoffHoldsThroughRetries: the planner names launch_backoff
// only while it waits; the metric holds while a retry runs too, and only
// then.
func TestLaunchBackoffHoldsThroughRetries(t *testing.T) {
	status := func(healthy, starting int, causes ...reconcile.Cause) reconcile.FleetStatus {
		st := reconcile.FleetStatus{Fleet: "web", Desired: 2, States: map[reconcile.InstanceState]int{}}
		for _, s := range reconcile.InstanceStates {
			st.States[s] = 0
		}
		st.States[reconcile.StateHealthy], st.States[reconcile.StateStarting] = healthy, starting
		for _, c := range causes {
			st.Blocked = append(st.Blocked, reconcile.Block{Cause: c})
		}
		return st
	}
	for _, c := range []struct {
		name     string
		st       reconcile.FleetStatus
		failures int
		want     float64
	}{
		{"the planner waits", status(0, 0, reconcile.CauseLaunchBackoff), 3, 1},
		{"a retry is starting", status(0, 1), 3, 1},
		{"one healthy of two, a retry starting", status(1, 1), 4, 1},
		{"the first failure is retried at once", status(0, 1), 1, 0},
		{"no failures", status(0, 2), 0, 0},
		{"the fleet is whole", status(2, 0), 5, 0},
		{"capped: its own cause", status(0, 0, reconcile.CauseLaunchCapped), 10, 0},
		{"paused: its own cause", status(0, 0, reconcile.CausePaused), 3, 0},
		{"provider unreachable: its own cause", status(0, 0, reconcile.CauseProviderUnreachable), 3, 0},
	} {
		m := newMetrics()
		m.publish(c.st, c.failures)
		if got := value(t, m.blocked.WithLabelValues("web", string(reconcile.CauseLaunchBackoff))); got != c.want {
			t.Errorf("%s: launch_backoff = %v, want %v", c.name, got, c.want)
		}
	}
	// Draining: nothing is wanted.
	st := status(0, 1)
	st.Draining, st.Desired = true, 0
	m := newMetrics()
	m.publish(st, 3)
	if got := value(t, m.blocked.WithLabelValues("web", string(reconcile.CauseLaunchBackoff))); got != 0 {
		t.Errorf("draining: launch_backoff = %v", got)
	}
}

// TestRemovedFleetWantsNoInstances: a fleet removed from the fleet files
// (kept running, not drained) is desired at 0, so that no alert counts
// its instances as missing, and is reported as unconfigured.
func TestRemovedFleetWantsNoInstances(t *testing.T) {
	ta := newAgent(t, agentOpts{})
	ta.waitLeader()
	ta.fleet("web", webFleet(2, "app:v1"))
	waitFor(t, "2 healthy instances", func() bool { return ta.healthyCount("web") == 2 })
	ta.waitMetric(`immutd_fleet_desired_instances{fleet="web"}`, 2)
	ta.waitMetric(`immutd_fleet_launch_failures{fleet="web"}`, 0)
	if err := os.Remove(filepath.Join(ta.fleets, "web.hcl")); err != nil {
		t.Fatal(err)
	}
	ta.waitMetric(`immutd_remediation_blocked{cause="unconfigured",fleet="web"}`, 1)
	ta.waitMetric(`immutd_fleet_desired_instances{fleet="web"}`, 0)
	if n := len(ta.prov.Running()); n != 2 {
		t.Fatalf("%d instances run after the removal, want the 2 kept", n)
	}
}
