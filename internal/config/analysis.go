package config

import (
	"fmt"
	"net/url"
	"time"

	"github.com/immutd/immutd/internal/analysis"
)

// Analysis is a rollout's `analysis { ... }` block: Prometheus queries
// measured every Interval while the rollout runs and bakes, with Argo
// Rollouts' semantics (a failed analysis fails the rollout, an
// inconclusive one pauses it, a canary is promoted and a version made
// stable only once it is successful).
type Analysis struct {
	// Prometheus is the server's URL ("http://127.0.0.1:9090").
	Prometheus string `json:"prometheus"`
	// Interval between measurements. Default 10s.
	Interval time.Duration    `json:"interval"`
	Metrics  []AnalysisMetric `json:"metrics"`
}

// AnalysisMetric is one `metric "name" { ... }` of an analysis.
type AnalysisMetric struct {
	Name string `json:"name"`
	// Query is PromQL; {{fleet}}, {{version}} and {{image_digest}} are
	// replaced by the rollout's.
	Query   string `json:"query"`
	Success string `json:"success,omitempty"`
	Failure string `json:"failure,omitempty"`
	// Count is the measurements that make the metric successful (0: it
	// never ends by itself; consecutive_success may end it).
	Count                 int  `json:"count"`
	FailureLimit          int  `json:"failure_limit"`
	InconclusiveLimit     int  `json:"inconclusive_limit"`
	ConsecutiveErrorLimit int  `json:"consecutive_error_limit"`
	ConsecutiveSuccess    int  `json:"consecutive_success"`
	DryRun                bool `json:"dry_run"`
}

// Analysis bounds and defaults.
const (
	DefaultAnalysisInterval = 10 * time.Second
	maxAnalysisMetrics      = 8
	maxQueryLen             = 2048
	maxMeasurements         = 10000
)

// analysis decodes a rollout's analysis block.
func (s *section) analysis() *Analysis {
	a := &Analysis{Interval: DefaultAnalysisInterval}
	switch s.text("prometheus", &a.Prometheus, checkPrometheusURL) {
	case missing:
		s.required("prometheus", `the Prometheus server's URL, as in "http://127.0.0.1:9090"`)
	}
	s.duration("interval", time.Second, time.Hour, &a.Interval)
	seen := map[string]bool{}
	for _, b := range s.labelled("metric", "metric name") {
		ms := s.child(b)
		if !backendNameRE.MatchString(b.Labels[0]) {
			ms.d.errorf(b.LabelRanges[0], ms.path, "a metric name must be 1 to 32 lowercase letters, digits, '-' or '_', got %q", b.Labels[0])
		}
		m := ms.analysisMetric(b.Labels[0])
		ms.done()
		switch {
		case seen[m.Name]:
			ms.d.errorf(b.LabelRanges[0], ms.path, "duplicate metric name %q", m.Name)
		case len(a.Metrics) == maxAnalysisMetrics:
			ms.d.errorf(b.TypeRange, ms.path, "an analysis has at most %d metrics", maxAnalysisMetrics)
		default:
			seen[m.Name] = true
			a.Metrics = append(a.Metrics, m)
		}
	}
	if len(a.Metrics) == 0 {
		s.d.errorf(s.header, s.path, `an analysis needs at least one metric "name" { query = ..., success = ... } block`)
	}
	s.done()
	return a
}

func (s *section) analysisMetric(name string) AnalysisMetric {
	m := AnalysisMetric{Name: name, ConsecutiveErrorLimit: analysis.DefaultConsecutiveErrorLimit}
	if s.text("query", &m.Query, checkQuery) == missing {
		s.required("query", `a PromQL query, as in "sum(rate(errors_total[1m]))"`)
	}
	s.text("success", &m.Success, checkCondition)
	s.text("failure", &m.Failure, checkCondition)
	if m.Success == "" && m.Failure == "" && s.body.Attributes["success"] == nil && s.body.Attributes["failure"] == nil {
		s.required("success", `a condition on the result, as in "result < 0.01" (or a failure condition)`)
	}
	s.integer("count", 0, maxMeasurements, &m.Count)
	s.integer("failure_limit", -1, maxMeasurements, &m.FailureLimit)
	s.integer("inconclusive_limit", 0, maxMeasurements, &m.InconclusiveLimit)
	s.integer("consecutive_error_limit", 0, maxMeasurements, &m.ConsecutiveErrorLimit)
	s.integer("consecutive_success", 0, maxMeasurements, &m.ConsecutiveSuccess)
	s.boolean("dry_run", &m.DryRun)
	return m
}

func checkPrometheusURL(v string) error {
	u, err := url.Parse(v)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
		return fmt.Errorf(`must be a Prometheus server's http(s) URL like "http://127.0.0.1:9090", got %q`, v)
	}
	return nil
}

func checkQuery(v string) error {
	if v == "" || len(v) > maxQueryLen {
		return fmt.Errorf("must be a PromQL query of 1 to %d bytes, got %d", maxQueryLen, len(v))
	}
	return nil
}

func checkCondition(v string) error {
	if _, err := analysis.ParseCondition(v); err != nil {
		return fmt.Errorf("%v", err)
	}
	return nil
}
