package prometheus_test

import (
	"encoding/json"
	"os"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/immutd/immutd/internal/agent"
)

// The Grafana dashboard (configs/grafana/immutd-dashboard.json) and the
// alert rules must name only metrics an agent really exports: promtool and
// Grafana accept any name, and a query of a misspelt or renamed metric is
// silently empty. These tests take the names from the agent itself
// (agent.MetricNames: every series it can export, histograms with their
// _bucket, _sum and _count) and the names from the queries with
// metricNames below.

const dashboardFile = "../grafana/immutd-dashboard.json"

// prometheusNames are series Prometheus makes itself.
var prometheusNames = []string{"up", "ALERTS", "ALERTS_FOR_STATE", "scrape_duration_seconds", "scrape_samples_scraped"}

var (
	stringRE   = regexp.MustCompile("\"(?:[^\"\\\\]|\\\\.)*\"|'(?:[^'\\\\]|\\\\.)*'|`[^`]*`")
	grafanaRE  = regexp.MustCompile(`\$\{[^}]*\}|\$[A-Za-z_][A-Za-z0-9_]*|\[\[[^\]]*\]\]`)
	matcherRE  = regexp.MustCompile(`\{[^{}]*\}`)
	rangeRE    = regexp.MustCompile(`\[[^\[\]]*\]`)
	groupingRE = regexp.MustCompile(`\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)`)
	numberRE   = regexp.MustCompile(`(?:^|[^A-Za-z0-9_:.])(?:0x[0-9a-fA-F]+|[0-9][0-9a-zA-Z.]*|\.[0-9][0-9a-zA-Z]*)`)
	identRE    = regexp.MustCompile(`[A-Za-z_:][A-Za-z0-9_:]*`)
	keywords   = map[string]bool{"and": true, "or": true, "unless": true, "by": true, "without": true, "on": true, "ignoring": true,
		"group_left": true, "group_right": true, "bool": true, "offset": true, "inf": true, "nan": true, "atan2": true}
)

// metricNames returns the metric names a PromQL expression selects (in a
// Grafana query: $variables and ${variables} allowed). It strips what is
// not a metric name: string literals, label matchers, ranges and
// subqueries, grouping clauses, numbers and durations; what remains is
// identifiers, of which those followed by "(" are functions or
// aggregations and the rest, keywords aside, metric names.
func metricNames(expr string) []string {
	s := grafanaRE.ReplaceAllString(expr, " 1 ")
	s = stringRE.ReplaceAllString(s, `""`)
	s = matcherRE.ReplaceAllString(s, " ")
	for rangeRE.MatchString(s) {
		s = rangeRE.ReplaceAllString(s, " ")
	}
	s = groupingRE.ReplaceAllString(s, " ")
	s = numberRE.ReplaceAllStringFunc(s, func(m string) string {
		if m != "" && !strings.ContainsAny(m[:1], "0123456789.") {
			return m[:1] + " "
		}
		return " "
	})
	var out []string
	for _, loc := range identRE.FindAllStringIndex(s, -1) {
		name := s[loc[0]:loc[1]]
		if keywords[strings.ToLower(name)] || strings.HasPrefix(strings.TrimLeft(s[loc[1]:], " \t\n"), "(") {
			continue
		}
		if !slices.Contains(out, name) {
			out = append(out, name)
		}
	}
	sort.Strings(out)
	return out
}

func TestMetricNamesOfAnExpression(t *testing.T) {
	for expr, want := range map[string][]string{
		`up{job="immutd"} == 0`: {"up"},
		`max by (fleet) (immutd_fleet_desired_instances) - on (fleet) (max by (fleet) (immutd_fleet_instances{state="healthy"}) or 0 * max by (fleet) (immutd_fleet_desired_instances)) > 0`: {
			"immutd_fleet_desired_instances", "immutd_fleet_instances"},
		`histogram_quantile(0.99, sum by (le) (rate(immutd_raft_commit_duration_seconds_bucket[$__rate_interval])))`:            {"immutd_raft_commit_duration_seconds_bucket"},
		`sum(rate(a_total{x=~"b c|d(e)", y!="{z}"}[5m:30s] offset 1h30m)) by (fleet) / ignoring(x) group_left b_total unless c`: {"a_total", "b_total", "c"},
		`label_replace(x == 0, "file", "fleets", "", "") or label_replace(y == 0, "file", "agent", "", "")`:                     {"x", "y"},
		`count(ALERTS{alertname=~"Immutd.*"}) or vector(0)`:                                                                     {"ALERTS"},
		`max by (fleet) (immutd_pauses{fleet=~"${fleet}"}) > 1e3 and on() immutd_x:rate5m >= .5`:                                {"immutd_pauses", "immutd_x:rate5m"},
		`topk(5, foo) + bool 2 * Inf`: {"foo"},
	} {
		if got := metricNames(expr); !slices.Equal(got, want) {
			t.Errorf("metricNames(%s) = %q, want %q", expr, got, want)
		}
	}
}

// knownNames is every name an agent can export, plus Prometheus's own.
func knownNames(t *testing.T) map[string]bool {
	t.Helper()
	names, err := agent.MetricNames()
	if err != nil {
		t.Fatal(err)
	}
	known := map[string]bool{}
	for _, n := range append(names, prometheusNames...) {
		known[n] = true
	}
	return known
}

// dashboardQuery is one PromQL query of the dashboard and where it is.
type dashboardQuery struct{ where, expr string }

// dashboardQueries returns every query of the dashboard: each panel
// target's expr (rows' nested panels included) and each query variable's
// label_values() selector; it fails the test on a panel without one.
func dashboardQueries(t *testing.T, path string) []dashboardQuery {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	type panel struct {
		ID      int             `json:"id"`
		Type    string          `json:"type"`
		Title   string          `json:"title"`
		Panels  json.RawMessage `json:"panels"`
		Targets []struct {
			RefID string `json:"refId"`
			Expr  string `json:"expr"`
		} `json:"targets"`
		Datasource struct {
			UID string `json:"uid"`
		} `json:"datasource"`
	}
	var dash struct {
		UID        string          `json:"uid"`
		Title      string          `json:"title"`
		Panels     json.RawMessage `json:"panels"`
		Templating struct {
			List []struct {
				Name  string          `json:"name"`
				Type  string          `json:"type"`
				Query json.RawMessage `json:"query"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	if dash.UID == "" || dash.Title == "" {
		t.Errorf("%s: no uid or title", path)
	}
	var out []dashboardQuery
	ids := map[int]bool{}
	var walk func(raw json.RawMessage)
	walk = func(raw json.RawMessage) {
		if len(raw) == 0 {
			return
		}
		var ps []panel
		if err := json.Unmarshal(raw, &ps); err != nil {
			t.Fatalf("%s: panels: %v", path, err)
		}
		for _, p := range ps {
			if ids[p.ID] {
				t.Errorf("panel id %d (%q) is used twice", p.ID, p.Title)
			}
			ids[p.ID] = true
			walk(p.Panels)
			if p.Type == "row" {
				continue
			}
			if p.Title == "" || len(p.Targets) == 0 {
				t.Errorf("panel %d (%q) has no title or no query", p.ID, p.Title)
			}
			if p.Datasource.UID != "${datasource}" {
				t.Errorf("panel %q does not use the datasource variable: %q", p.Title, p.Datasource.UID)
			}
			refs := map[string]bool{}
			for _, tg := range p.Targets {
				if strings.TrimSpace(tg.Expr) == "" || tg.RefID == "" || refs[tg.RefID] {
					t.Errorf("panel %q: target %q has no expr, or no or a repeated refId", p.Title, tg.RefID)
				}
				refs[tg.RefID] = true
				out = append(out, dashboardQuery{where: "panel " + p.Title + " " + tg.RefID, expr: tg.Expr})
			}
		}
	}
	walk(dash.Panels)
	labelValuesRE := regexp.MustCompile(`^\s*label_values\((.*),\s*[A-Za-z_][A-Za-z0-9_]*\s*\)\s*$`)
	for _, v := range dash.Templating.List {
		if v.Type != "query" {
			continue
		}
		var q struct {
			Query string `json:"query"`
		}
		if err := json.Unmarshal(v.Query, &q); err != nil {
			if err := json.Unmarshal(v.Query, &q.Query); err != nil {
				t.Fatalf("variable %s: query: %v", v.Name, err)
			}
		}
		m := labelValuesRE.FindStringSubmatch(q.Query)
		if m == nil {
			t.Errorf("variable %s: query %q is not label_values(SELECTOR, LABEL)", v.Name, q.Query)
			continue
		}
		out = append(out, dashboardQuery{where: "variable " + v.Name, expr: m[1]})
	}
	return out
}

func TestDashboardQueriesNameRealMetrics(t *testing.T) {
	known := knownNames(t)
	queries := dashboardQueries(t, dashboardFile)
	if len(queries) < 20 {
		t.Fatalf("only %d queries in %s", len(queries), dashboardFile)
	}
	for _, q := range queries {
		names := metricNames(q.expr)
		if len(names) == 0 {
			t.Errorf("%s: no metric in %q", q.where, q.expr)
		}
		for _, n := range names {
			if !known[n] {
				t.Errorf("%s: %q names %s, which no agent exports", q.where, q.expr, n)
			}
		}
		// Prometheus's own series and the runtime metrics exist for every
		// job: select the immutd one.
		for _, n := range names {
			if (n == "up" || strings.HasPrefix(n, "process_") || strings.HasPrefix(n, "go_")) && !strings.Contains(q.expr, `job="immutd"`) {
				t.Errorf("%s: %q reads %s of every job, not of job=\"immutd\"", q.where, q.expr, n)
			}
		}
	}
}

// ruleExprs returns the expressions of the rules file, and the queries
// of its annotation templates (query "..." and printf `...` | query).
func ruleExprs(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile(rulesFile)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(b), "\n")
	var out []string
	for i := 0; i < len(lines); i++ {
		line := lines[i]
		trimmed := strings.TrimLeft(line, " ")
		indent := len(line) - len(trimmed)
		rest, ok := strings.CutPrefix(trimmed, "expr:")
		if !ok {
			continue
		}
		rest = strings.TrimSpace(rest)
		if rest != "|" && rest != ">" && rest != "|-" && rest != ">-" {
			out = append(out, rest)
			continue
		}
		var block []string
		for i+1 < len(lines) {
			next := lines[i+1]
			if strings.TrimSpace(next) != "" && len(next)-len(strings.TrimLeft(next, " ")) <= indent {
				break
			}
			block = append(block, next)
			i++
		}
		out = append(out, strings.Join(block, "\n"))
	}
	// Queries inside annotation templates.
	for _, m := range regexp.MustCompile("(?:query|printf) (`[^`]*`|\"[^\"]*\")").FindAllStringSubmatch(string(b), -1) {
		q := m[1][1 : len(m[1])-1]
		q = strings.ReplaceAll(q, "%q", `"x"`)
		out = append(out, q)
	}
	return out
}

func TestRulesNameRealMetrics(t *testing.T) {
	known := knownNames(t)
	exprs := ruleExprs(t)
	alerts := regexp.MustCompile(`(?m)^\s*-\s*alert:`).FindAllString(mustRead(t, rulesFile), -1)
	if len(exprs) < len(alerts) {
		t.Fatalf("found %d expressions for %d alerts", len(exprs), len(alerts))
	}
	for _, e := range exprs {
		for _, n := range metricNames(e) {
			if !known[n] {
				t.Errorf("rule expression %q names %s, which no agent exports", e, n)
			}
		}
	}
	// Names in comments, descriptions and runbooks are checked too (an
	// operator reads them): every immutd_ name that is not a prefix.
	text := mustRead(t, rulesFile)
	for _, loc := range regexp.MustCompile(`\bimmutd_[a-z0-9_]*[a-z0-9]`).FindAllStringIndex(text, -1) {
		name := text[loc[0]:loc[1]]
		if loc[1] < len(text) && (text[loc[1]] == '*' || text[loc[1]] == '_') {
			continue
		}
		if !known[name] {
			t.Errorf("%s mentions %s, which no agent exports", rulesFile, name)
		}
	}
}

func mustRead(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
