package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/immutd/immutd/internal/state"
)

// Alerting end to end (issue 12): a real Prometheus scrapes a real agent
// and evaluates the shipped rules (configs/prometheus/immutd.rules.yml),
// a real Alertmanager routes what fires to a webhook this test runs, and
// the test makes the conditions happen for real.
//
// The rules are loaded as shipped except for one documented substitution
// (scaledRules): every `for:` duration is divided by 60, so a minute of
// the rules is a second here; keep_firing_for and everything else stay.
// Prometheus scrapes and evaluates every second, Alertmanager sends at
// once (group_wait 0s) and groups nothing.
//
// Tools: /usr/bin/prometheus (Debian package prometheus) and
// prometheus-alertmanager (Debian package prometheus-alertmanager), both
// installed by .ci/ensure-tools; PROMETHEUS and ALERTMANAGER name other
// binaries. A missing tool fails the test.

const (
	// forScale divides the rules' `for:` durations.
	forScale = 60
	// evalEvery is Prometheus' scrape and evaluation interval.
	evalEvery = time.Second
)

// forRE finds a rule's `for:` duration (not keep_firing_for).
var forRE = regexp.MustCompile(`(?m)^(\s+for:\s*)([0-9]+)([smh])\s*$`)

// scaledRules is the shipped rules file with every `for:` duration
// divided by forScale, a minute becoming a second, and the durations it
// set, by alert.
func scaledRules(t *testing.T) (string, map[string]time.Duration) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot, "configs", "prometheus", "immutd.rules.yml"))
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	out := forRE.ReplaceAllStringFunc(string(b), func(line string) string {
		m := forRE.FindStringSubmatch(line)
		v, _ := strconv.Atoi(m[2])
		d := map[string]time.Duration{"s": time.Second, "m": time.Minute, "h": time.Hour}[m[3]] * time.Duration(v) / forScale
		n++
		if d%time.Minute == 0 {
			return fmt.Sprintf("%s%dm", m[1], d/time.Minute)
		}
		return fmt.Sprintf("%s%ds", m[1], d/time.Second)
	})
	if n == 0 {
		t.Fatal("no `for:` in the rules file")
	}
	fors := map[string]time.Duration{}
	for _, block := range strings.Split(out, "- alert:")[1:] {
		name := strings.Fields(block)[0]
		if m := forRE.FindStringSubmatch(block); m != nil {
			d, err := time.ParseDuration(m[2] + m[3])
			if err != nil {
				t.Fatal(err)
			}
			fors[name] = d
		}
	}
	if len(fors) != n {
		t.Fatalf("%d `for:` durations scaled, %d found in alerts: the rules file is not understood", n, len(fors))
	}
	return out, fors
}

// ---- the webhook ----

// notification is one alert of a webhook call, as Alertmanager sent it.
type notification struct {
	at          time.Time
	status      string // firing or resolved
	labels      map[string]string
	annotations map[string]string
}

type webhook struct {
	srv *httptest.Server
	mu  sync.Mutex
	got []notification
}

func newWebhook(t *testing.T) *webhook {
	w := &webhook{}
	w.srv = httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		var msg struct {
			Alerts []struct {
				Status      string            `json:"status"`
				Labels      map[string]string `json:"labels"`
				Annotations map[string]string `json:"annotations"`
			} `json:"alerts"`
		}
		body, _ := io.ReadAll(r.Body)
		if err := json.Unmarshal(body, &msg); err != nil {
			t.Errorf("webhook: %v in %s", err, body)
		}
		now := time.Now()
		w.mu.Lock()
		for _, a := range msg.Alerts {
			w.got = append(w.got, notification{at: now, status: a.Status, labels: a.Labels, annotations: a.Annotations})
		}
		w.mu.Unlock()
	}))
	t.Cleanup(w.srv.Close)
	return w
}

// find returns the first notification with the status whose labels
// include want.
func (w *webhook) find(status string, want map[string]string) (notification, bool) {
	return w.findSince(time.Time{}, status, want)
}

// findSince is find among the notifications received at or after since.
func (w *webhook) findSince(since time.Time, status string, want map[string]string) (notification, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, n := range w.got {
		if !n.at.Before(since) && n.status == status && includes(n.labels, want) {
			return n, true
		}
	}
	return notification{}, false
}

func includes(labels, want map[string]string) bool {
	for k, v := range want {
		if labels[k] != v {
			return false
		}
	}
	return true
}

func (w *webhook) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	var lines []string
	for _, n := range w.got {
		lines = append(lines, fmt.Sprintf("%s %s %v", n.at.Format("15:04:05.000"), n.status, n.labels))
	}
	return strings.Join(lines, "\n")
}

// ---- Prometheus and Alertmanager ----

// tool finds a binary: the environment variable, else the first name in
// PATH.
func tool(t *testing.T, env string, names ...string) string {
	t.Helper()
	if p := os.Getenv(env); p != "" {
		return p
	}
	for _, n := range names {
		if p, err := exec.LookPath(n); err == nil {
			return p
		}
	}
	t.Fatalf("none of %v in PATH and %s is not set (run .ci/ensure-tools)", names, env)
	return ""
}

// startProcess starts a tool with its output in dir/log and kills it (by
// its pid) when the test ends.
func startProcess(t *testing.T, dir, bin string, args ...string) {
	t.Helper()
	logf, err := os.Create(filepath.Join(dir, "log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		logf.Close()
		if t.Failed() {
			b, _ := os.ReadFile(filepath.Join(dir, "log"))
			lines := strings.Split(strings.TrimSpace(string(b)), "\n")
			if len(lines) > 30 {
				lines = lines[len(lines)-30:]
			}
			t.Logf("%s log (tail):\n%s", filepath.Base(bin), strings.Join(lines, "\n"))
		}
	})
}

// waitHTTP waits until u answers 200.
func waitHTTP(e *env, what, u string) {
	e.t.Helper()
	e.waitFor(what, 60*time.Second, func() (bool, string) {
		resp, err := http.Get(u)
		if err != nil {
			return false, err.Error()
		}
		resp.Body.Close()
		return resp.StatusCode == 200, resp.Status
	})
}

// alerting is a Prometheus and an Alertmanager for one agent.
type alerting struct {
	e    *env
	prom string // base URL
	hook *webhook
	fors map[string]time.Duration
	// started is when Prometheus began to evaluate the rules.
	started time.Time
}

func startAlerting(t *testing.T, e *env) *alerting {
	t.Helper()
	a := &alerting{e: e, hook: newWebhook(t)}
	amDir, promDir := t.TempDir(), t.TempDir()
	amAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	promAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	amConfig := fmt.Sprintf(`route:
  receiver: webhook
  group_by: ['...']
  group_wait: 0s
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: webhook
    webhook_configs:
      - url: %q
        send_resolved: true
`, a.hook.srv.URL+"/")
	must(t, os.WriteFile(filepath.Join(amDir, "alertmanager.yml"), []byte(amConfig), 0o644))
	startProcess(t, amDir, tool(t, "ALERTMANAGER", "prometheus-alertmanager", "alertmanager"),
		"--config.file="+filepath.Join(amDir, "alertmanager.yml"), "--storage.path="+filepath.Join(amDir, "data"),
		"--web.listen-address="+amAddr, "--cluster.listen-address=", "--log.level=info")
	waitHTTP(e, "alertmanager ready", "http://"+amAddr+"/-/ready")

	rules, fors := scaledRules(t)
	a.fors = fors
	must(t, os.WriteFile(filepath.Join(promDir, "immutd.rules.yml"), []byte(rules), 0o644))
	promConfig := fmt.Sprintf(`global:
  scrape_interval: %[1]s
  scrape_timeout: %[1]s
  evaluation_interval: %[1]s
rule_files:
  - immutd.rules.yml
alerting:
  alertmanagers:
    - static_configs:
        - targets: [%[2]q]
scrape_configs:
  - job_name: immutd
    static_configs:
      - targets: [%[3]q]
`, evalEvery, amAddr, e.httpAddr)
	must(t, os.WriteFile(filepath.Join(promDir, "prometheus.yml"), []byte(promConfig), 0o644))
	startProcess(t, promDir, tool(t, "PROMETHEUS", "prometheus"),
		"--config.file="+filepath.Join(promDir, "prometheus.yml"), "--storage.tsdb.path="+filepath.Join(promDir, "data"),
		"--web.listen-address="+promAddr, "--log.level=info")
	a.prom = "http://" + promAddr
	a.started = time.Now()
	waitHTTP(e, "prometheus ready", a.prom+"/-/ready")
	e.waitFor("prometheus to scrape the agent", 60*time.Second, func() (bool, string) {
		v, err := a.query(`immutd_cluster_is_leader{job="immutd"}`)
		return err == nil && len(v) == 1 && v[0].value == 1, fmt.Sprintf("%v %v", v, err)
	})
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("webhook notifications:\n%s", a.hook)
			if b, err := a.get("/api/v1/alerts", nil); err == nil {
				t.Logf("prometheus alerts: %s", b)
			}
		}
	})
	return a
}

func (a *alerting) get(path string, q url.Values) ([]byte, error) {
	c := http.Client{Timeout: 10 * time.Second}
	u := a.prom + path
	if q != nil {
		u += "?" + q.Encode()
	}
	resp, err := c.Get(u)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != 200 {
		return b, fmt.Errorf("GET %s: %s: %s", path, resp.Status, b)
	}
	return b, nil
}

type sample struct {
	labels map[string]string
	value  float64
}

func (s sample) String() string { return fmt.Sprintf("%v=%g", s.labels, s.value) }

// query evaluates an instant query now.
func (a *alerting) query(q string) ([]sample, error) {
	b, err := a.get("/api/v1/query", url.Values{"query": {q}})
	if err != nil {
		return nil, err
	}
	var r struct {
		Status string `json:"status"`
		Data   struct {
			ResultType string `json:"resultType"`
			Result     []struct {
				Metric map[string]string `json:"metric"`
				Value  [2]any            `json:"value"`
			} `json:"result"`
		} `json:"data"`
	}
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, err
	}
	if r.Status != "success" {
		return nil, fmt.Errorf("query %s: %s", q, b)
	}
	var out []sample
	for _, x := range r.Data.Result {
		s, _ := x.Value[1].(string)
		v, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return nil, fmt.Errorf("query %s: value %v", q, x.Value)
		}
		out = append(out, sample{labels: x.Metric, value: v})
	}
	return out, nil
}

// mustQuery is query; an error fails the test.
func (a *alerting) mustQuery(q string) []sample {
	a.e.t.Helper()
	v, err := a.query(q)
	if err != nil {
		a.e.t.Fatal(err)
	}
	return v
}

// lastEvaluation is when Prometheus last evaluated the rules.
func (a *alerting) lastEvaluation() (time.Time, error) {
	b, err := a.get("/api/v1/rules", nil)
	if err != nil {
		return time.Time{}, err
	}
	var r struct {
		Data struct {
			Groups []struct {
				LastEvaluation time.Time `json:"lastEvaluation"`
			} `json:"groups"`
		} `json:"data"`
	}
	if err := json.Unmarshal(b, &r); err != nil {
		return time.Time{}, err
	}
	if len(r.Data.Groups) != 1 {
		return time.Time{}, fmt.Errorf("%d rule groups", len(r.Data.Groups))
	}
	return r.Data.Groups[0].LastEvaluation, nil
}

// waitEvaluatedAfter waits until Prometheus has evaluated the rules
// later than d after since: every rule has seen what happened by then,
// and a `for` of at most d that began at since has been judged.
func (a *alerting) waitEvaluatedAfter(since time.Time, d time.Duration) {
	a.e.t.Helper()
	a.e.waitFor(fmt.Sprintf("rules evaluated %v after %s", d, since.Format("15:04:05.000")), 60*time.Second+d, func() (bool, string) {
		last, err := a.lastEvaluation()
		if err != nil {
			return false, err.Error()
		}
		return last.After(since.Add(d)), "last evaluation " + last.Format("15:04:05.000")
	})
}

// delivery is the budget for an alert to reach the webhook once its
// condition holds: the rule's `for`, plus evaluations, scrapes and
// Alertmanager's dispatch. It only bounds a broken test (the latencies
// are logged); a loaded host makes them longer, never the test wrong.
func (a *alerting) delivery(alert string) time.Duration { return a.fors[alert] + 90*time.Second }

// waitDelivered waits until the webhook got the alert firing with the
// labels after since, the moment its condition held, and returns the
// notification; it logs the latency.
func (a *alerting) waitDelivered(alert string, labels map[string]string, since time.Time) notification {
	a.e.t.Helper()
	want := map[string]string{"alertname": alert}
	for k, v := range labels {
		want[k] = v
	}
	var n notification
	a.e.waitFor(fmt.Sprintf("%v to be delivered", want), a.delivery(alert), func() (bool, string) {
		var ok bool
		n, ok = a.hook.findSince(since, "firing", want)
		a.hook.mu.Lock()
		defer a.hook.mu.Unlock()
		return ok, fmt.Sprintf("%d notifications so far", len(a.hook.got))
	})
	a.e.t.Logf("%s %v delivered %v after its condition held (for: %v)", alert, labels, n.at.Sub(since).Round(10*time.Millisecond), a.fors[alert])
	return n
}

// neverAlerted fails the test if the alert with the labels was pending,
// firing or delivered at any time in the last window.
func (a *alerting) neverAlerted(alert string, labels map[string]string, window time.Duration) {
	a.e.t.Helper()
	sel := fmt.Sprintf(`ALERTS{alertname=%q`, alert)
	keys := make([]string, 0, len(labels))
	for k := range labels {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		sel += fmt.Sprintf(",%s=%q", k, labels[k])
	}
	sel += "}"
	secs := int(math.Ceil(window.Seconds()))
	if v := a.mustQuery(fmt.Sprintf("count_over_time(%s[%ds])", sel, secs)); len(v) != 0 {
		a.e.t.Fatalf("%s was pending or firing in the last %ds: %v", sel, secs, v)
	}
	want := map[string]string{"alertname": alert}
	for k, v := range labels {
		want[k] = v
	}
	if n, ok := a.hook.find("firing", want); ok {
		a.e.t.Fatalf("%v was delivered at %s", want, n.at.Format("15:04:05.000"))
	}
}

// ---- the test ----

// alertingFleet is a fleet file of the local provider for this test; its
// checks judge an instance unhealthy after 10 failed probes (3s): a
// settle window long enough for instances made to fail together to be
// judged together on a loaded host.
func alertingFleet(name string, size int, extra string) string {
	return strings.Replace(fleetFile(name, size, "v1", extra), "unhealthy_threshold = 2", "unhealthy_threshold = 10", 1)
}

func TestAlertingEndToEnd(t *testing.T) {
	e := newEnv(t, envOpts{autoDrain: true})
	// breaker: two of three instances will fail: more than max_unhealthy.
	e.writeFleet("breaker.hcl", alertingFleet("breaker", 3, "  remediation {\n    max_unhealthy = 1\n  }\n"))
	// crashloop: no instance ever becomes healthy (its check asks for a
	// page the app does not have), so every launch fails after 2s and
	// launches back off; no cap.
	crash := fleetFile("crashloop", 1, "v1", "  remediation {\n    max_launch_failures = 0\n  }\n")
	crash = strings.Replace(crash, `path                = "/healthz"`, `path                = "/no-such-page"`, 1)
	crash = strings.Replace(crash, `startup_timeout     = "15s"`, `startup_timeout     = "2s"`, 1)
	e.writeFleet("crashloop.hcl", crash)
	// drained and kept will be removed on purpose.
	e.writeFleet("drained.hcl", alertingFleet("drained", 2, ""))
	e.writeFleet("kept.hcl", alertingFleet("kept", 2, ""))
	e.start()
	for fleet, n := range map[string]int{"breaker": 3, "drained": 2, "kept": 2} {
		e.waitHealthy(fleet, n, "", 90*time.Second)
	}
	// Prometheus starts once the fleets are whole, so that nothing pends
	// from their start.
	a := startAlerting(t, e)

	// Every query of the Grafana dashboard is valid PromQL for this
	// Prometheus (the names are checked in configs/prometheus).
	checkDashboard(t, a)

	// 1. The breaker: two of three instances fail, more than
	// max_unhealthy: remediation is blocked, and the fleet is below its
	// desired size.
	f := e.fleet("breaker")
	setHealth(t, f.Instances[0], true)
	setHealth(t, f.Instances[1], true)
	var blockedAt time.Time
	e.waitFor("the breaker to open", 90*time.Second, func() (bool, string) {
		f := e.fleet("breaker")
		blockedAt = time.Now()
		return blockedBy(f, "too_many_unhealthy") != nil, describe(f)
	})
	a.waitDelivered("ImmutdRemediationBlocked", map[string]string{"fleet": "breaker", "cause": "too_many_unhealthy", "severity": "warning"}, blockedAt)
	below := a.waitDelivered("ImmutdFleetBelowDesired", map[string]string{"fleet": "breaker", "severity": "critical"}, blockedAt)
	// (A replacement may have been launched first: the unhealthy ones stay.)
	if d := below.annotations["description"]; !strings.Contains(d, "Fleet breaker has been") || !strings.Contains(d, "unhealthy=2") {
		t.Errorf("ImmutdFleetBelowDesired description: %q", d)
	}

	// 2. Launches that keep failing (since the agent started): launch_backoff
	// fires, and the fleet is below desired.
	backoff := a.waitDelivered("ImmutdRemediationBlocked", map[string]string{"fleet": "crashloop", "cause": "launch_backoff"}, a.started)
	a.waitDelivered("ImmutdFleetBelowDesired", map[string]string{"fleet": "crashloop"}, a.started)

	// 3. A fleet removed on purpose (auto_drain_removed_fleets) is drained
	// and forgotten, and pages nobody.
	removedAt := time.Now()
	must(t, os.Remove(filepath.Join(e.fleetsDir, "drained.hcl")))
	e.waitFor("drained to be forgotten", 90*time.Second, func() (bool, string) {
		_, ok := fleetOf(e.status(), "drained")
		return !ok, describe(e.fleet("drained"))
	})
	e.waitFor("prometheus to see drained gone", 60*time.Second, func() (bool, string) {
		v, err := a.query(`immutd_fleet_desired_instances{fleet="drained"}`)
		return err == nil && len(v) == 0, fmt.Sprintf("%v %v", v, err)
	})
	a.waitEvaluatedAfter(time.Now(), a.fors["ImmutdFleetBelowDesired"]+3*evalEvery)
	a.neverAlerted("ImmutdFleetBelowDesired", map[string]string{"fleet": "drained"}, time.Since(removedAt))

	// 4. Rejected configuration: a broken fleet file, then a broken agent
	// file sent with SIGHUP.
	brokenAt := time.Now()
	e.writeFleet("broken.hcl", "fleet \"broken\" {\n  size = \n")
	n := a.waitDelivered("ImmutdConfigReloadFailed", map[string]string{"file": "fleets", "instance": e.httpAddr}, brokenAt)
	if rb := n.annotations["runbook"]; strings.Contains(rb, "systemctl reload") || !strings.Contains(rb, "no reload is needed") {
		t.Errorf("the fleet files' runbook: %q", rb)
	}
	must(t, os.Remove(filepath.Join(e.fleetsDir, "broken.hcl")))
	e.waitFor("the fleet files to load again", 60*time.Second, func() (bool, string) {
		st := e.status()
		return st.Config.OK, fmt.Sprintf("%+v", st.Config)
	})
	good, err := os.ReadFile(e.cfgPath)
	must(t, err)
	must(t, os.WriteFile(e.cfgPath, []byte("this is not hcl {"), 0o644))
	hupAt := time.Now()
	must(t, syscall.Kill(e.pid(), syscall.SIGHUP))
	n = a.waitDelivered("ImmutdConfigReloadFailed", map[string]string{"file": "agent", "instance": e.httpAddr}, hupAt)
	if rb := n.annotations["runbook"]; !strings.Contains(rb, "systemctl reload immutd") {
		t.Errorf("the agent file's runbook: %q", rb)
	}
	// A good agent file again, now without auto drain.
	keep := strings.Replace(string(good), "auto_drain_removed_fleets = true", "auto_drain_removed_fleets = false", 1)
	must(t, os.WriteFile(e.cfgPath, []byte(keep), 0o644))
	must(t, syscall.Kill(e.pid(), syscall.SIGHUP))
	e.waitFor("the agent file to be accepted", 60*time.Second, func() (bool, string) {
		v, err := a.query(`immutd_agent_config_last_reload_successful == 1`)
		return err == nil && len(v) == 1, fmt.Sprintf("%v %v", v, err)
	})

	// 5. A fleet removed on purpose without auto drain keeps its instances
	// and nothing replaces the one that exits: no page either, only the
	// informational ImmutdFleetUnconfigured.
	keptAt := time.Now()
	must(t, os.Remove(filepath.Join(e.fleetsDir, "kept.hcl")))
	e.waitFor("kept to be unconfigured", 60*time.Second, func() (bool, string) {
		f := e.fleet("kept")
		return blockedBy(f, "unconfigured") != nil, describe(f)
	})
	victim := e.fleet("kept").Instances[0]
	must(t, syscall.Kill(localPID(t, victim), syscall.SIGKILL))
	e.waitFor("prometheus to see the exited instance", 60*time.Second, func() (bool, string) {
		v, err := a.query(`immutd_fleet_instances{fleet="kept",state="exited"} == 1`)
		return err == nil && len(v) == 1, fmt.Sprintf("%v %v", v, err)
	})
	a.waitEvaluatedAfter(time.Now(), a.fors["ImmutdFleetBelowDesired"]+3*evalEvery)
	a.neverAlerted("ImmutdFleetBelowDesired", map[string]string{"fleet": "kept"}, time.Since(keptAt))
	a.waitDelivered("ImmutdFleetUnconfigured", map[string]string{"fleet": "kept", "severity": "info"}, keptAt)

	// 6. launch_backoff stayed firing, and its series at 1, through the
	// retries since it fired: at least two launches after it fired, and
	// the second one's instance failed too (so a whole retry, launched,
	// starting and failing, lies inside the window).
	e.waitFor("two more retries of crashloop", 3*time.Minute, func() (bool, string) {
		launches, failedAfter := 0, false
		for _, ev := range e.events() {
			if ev.Fleet != "crashloop" || !ev.Time.After(backoff.at) {
				continue
			}
			switch {
			case ev.Action == state.ActionLaunchPlanned:
				launches++
			case ev.Action == state.ActionTerminatePlanned && launches >= 2:
				failedAfter = true
			}
		}
		return launches >= 2 && failedAfter, fmt.Sprintf("%d launches since it fired", launches)
	})
	a.waitEvaluatedAfter(time.Now(), evalEvery)
	window := int(time.Since(backoff.at).Seconds())
	sel := `immutd_remediation_blocked{fleet="crashloop",cause="launch_backoff"}`
	if v := a.mustQuery(fmt.Sprintf("min_over_time(%s[%ds])", sel, window)); len(v) != 1 || v[0].value != 1 {
		t.Errorf("%s over the last %ds: min %v, want 1 throughout", sel, window, v)
	}
	if v := a.mustQuery(fmt.Sprintf(`max_over_time(sum(immutd_fleet_instances{fleet="crashloop",state=~"launching|starting"})[%ds:1s])`, window)); len(v) != 1 || v[0].value < 1 {
		t.Errorf("no retry was scraped while it started in the last %ds: %v", window, v)
	}
	if v := a.mustQuery(fmt.Sprintf(`min_over_time(ALERTS{alertname="ImmutdRemediationBlocked",fleet="crashloop",cause="launch_backoff",alertstate="firing"}[%ds])`, window)); len(v) != 1 {
		t.Errorf("the launch_backoff alert was not firing throughout the last %ds: %v", window, v)
	}
	if n, ok := a.hook.find("resolved", map[string]string{"alertname": "ImmutdRemediationBlocked", "fleet": "crashloop"}); ok {
		t.Errorf("the launch_backoff alert was resolved at %s", n.at.Format("15:04:05.000"))
	}
	// The launches of crashloop are counted per fleet.
	if v := a.mustQuery(`immutd_intents_finished_total{fleet="crashloop",kind="launch",outcome="done"} >= 3`); len(v) != 1 {
		t.Errorf("launches of crashloop by fleet: %v", v)
	}

	// 7. The only agent goes down: ImmutdAgentDown and ImmutdNoLeader
	// fire within a minute (a second here), and the fleet alerts that
	// fired do not resolve.
	downAt := time.Now()
	e.kill9()
	a.waitDelivered("ImmutdAgentDown", map[string]string{"instance": e.httpAddr, "severity": "warning"}, downAt)
	a.waitDelivered("ImmutdNoLeader", map[string]string{"severity": "critical"}, downAt)
	a.waitDelivered("ImmutdMetricsAbsent", nil, downAt)
	a.waitEvaluatedAfter(time.Now(), 3*evalEvery)
	for _, labels := range []map[string]string{
		{"alertname": "ImmutdFleetBelowDesired", "fleet": "breaker"},
		{"alertname": "ImmutdRemediationBlocked", "fleet": "breaker", "cause": "too_many_unhealthy"},
		{"alertname": "ImmutdRemediationBlocked", "fleet": "crashloop", "cause": "launch_backoff"},
	} {
		if n, ok := a.hook.find("resolved", labels); ok {
			t.Errorf("%v was resolved at %s, %v after the agent went down", labels, n.at.Format("15:04:05.000"), n.at.Sub(downAt))
		}
		sel := fmt.Sprintf(`ALERTS{alertstate="firing",alertname=%q,fleet=%q}`, labels["alertname"], labels["fleet"])
		if v := a.mustQuery(sel); len(v) == 0 {
			t.Errorf("%s is not firing any more with the agent down", sel)
		}
	}
}

// checkDashboard evaluates every query of the Grafana dashboard, its
// variables replaced, in Prometheus: each must be valid.
func checkDashboard(t *testing.T, a *alerting) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot, "configs", "grafana", "immutd-dashboard.json"))
	if err != nil {
		t.Fatal(err)
	}
	var dash any
	must(t, json.Unmarshal(b, &dash))
	var exprs []string
	var walk func(v any)
	walk = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			if s, ok := v["expr"].(string); ok {
				exprs = append(exprs, s)
			}
			for _, x := range v {
				walk(x)
			}
		case []any:
			for _, x := range v {
				walk(x)
			}
		}
	}
	walk(dash)
	vars := strings.NewReplacer("$__rate_interval", "5s", "$__interval", "1s", "${fleet}", ".*", "$fleet", ".*")
	withData := 0
	for _, expr := range exprs {
		v, err := a.query(vars.Replace(expr))
		if err != nil {
			t.Errorf("dashboard query %q: %v", expr, err)
		}
		if len(v) > 0 {
			withData++
		}
	}
	t.Logf("%d dashboard queries are valid PromQL, %d of them have data", len(exprs), withData)
	if len(exprs) < 20 {
		t.Errorf("only %d queries in the dashboard", len(exprs))
	}
}
