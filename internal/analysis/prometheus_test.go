package analysis_test

import (
	"context"
	"fmt"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/immutd/immutd/internal/analysis"
	"github.com/immutd/immutd/internal/analysis/promtest"
)

// waitTimeout bounds each wait for Prometheus to show a value. It is a
// deadline for a condition, generous so that a loaded machine passes.
const waitTimeout = 90 * time.Second

// TestPrometheus runs queries and measurements against a real Prometheus
// scraping a counter of the test's own.
func TestPrometheus(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a real Prometheus; skipped under -short")
	}
	began := time.Now()
	reg := prometheus.NewRegistry()
	errorsTotal := prometheus.NewCounter(prometheus.CounterOpts{
		Name: "sampleapp_errors_total",
		Help: "Errors of the sample app.",
	})
	reg.MustRegister(errorsTotal)
	app := httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	t.Cleanup(app.Close)

	address := promtest.Start(t, []string{app.URL})
	t.Logf("prometheus ready at %s after %s", address, time.Since(began).Round(time.Millisecond))
	c, err := analysis.NewClient(address, nil)
	if err != nil {
		t.Fatal(err)
	}
	m := analysis.Metric{
		Name:                  "errors",
		Query:                 "sampleapp_errors_total",
		Success:               analysis.MustParseCondition("result < 1"),
		Failure:               analysis.MustParseCondition("result >= 5"),
		HasSuccess:            true,
		HasFailure:            true,
		ConsecutiveErrorLimit: analysis.DefaultConsecutiveErrorLimit,
	}
	var tally analysis.Tally
	measure := func(values []float64, want analysis.Phase) {
		t.Helper()
		phase, detail := analysis.Measure(m, values, nil)
		if phase != want {
			t.Fatalf("Measure(%v) = %s (%s), want %s", values, phase, detail, want)
		}
		tally = tally.Add(phase, detail)
		t.Logf("measured %s: %s", phase, detail)
	}

	values := waitForValue(t, c, m.Query, func(v float64) bool { return v == 0 })
	measure(values, analysis.PhaseSuccessful)

	errorsTotal.Add(3)
	values = waitForValue(t, c, m.Query, func(v float64) bool { return v == 3 })
	measure(values, analysis.PhaseInconclusive)

	errorsTotal.Add(2)
	values = waitForValue(t, c, m.Query, func(v float64) bool { return v >= 5 })
	measure(values, analysis.PhaseFailed)

	if got := analysis.Judge(m, tally); got != analysis.OutcomeFailed {
		t.Fatalf("Judge = %s after %+v, want failed", got, tally)
	}

	// A query Prometheus refuses is an error with Prometheus's reason.
	_, err = c.Query(context.Background(), "sum(", time.Now())
	if err == nil {
		t.Fatal("a bad query succeeded")
	}
	phase, detail := analysis.Measure(m, nil, err)
	if phase != analysis.PhaseError {
		t.Fatalf("Measure of a bad query = %s (%s)", phase, detail)
	}
	t.Logf("bad query: %s", detail)

	// A vector of two series, in label order.
	values = waitFor(t, c, `label_replace(vector(1), "k", "b", "", "") or label_replace(vector(2), "k", "a", "", "")`,
		func(v []float64) bool { return len(v) == 2 })
	if values[0] != 2 || values[1] != 1 {
		t.Fatalf("two series = %v, want [2 1] (k=a before k=b)", values)
	}
	t.Logf("integration test took %s", time.Since(began).Round(time.Millisecond))
}

// waitForValue waits until query returns exactly one value that ok
// accepts, and returns the result.
func waitForValue(t *testing.T, c *analysis.Client, query string, ok func(float64) bool) []float64 {
	t.Helper()
	return waitFor(t, c, query, func(v []float64) bool { return len(v) == 1 && ok(v[0]) })
}

// waitFor polls query until ok accepts its result, or fails the test
// after waitTimeout. Empty results and errors in between are expected: a
// scrape that times out on a loaded machine marks the series stale until
// the next one succeeds.
func waitFor(t *testing.T, c *analysis.Client, query string, ok func([]float64) bool) []float64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	last := "no answer yet"
	for {
		values, err := c.Query(ctx, query, time.Now())
		if err == nil && ok(values) {
			return values
		}
		if err != nil {
			last = err.Error()
		} else {
			last = fmt.Sprint(values)
		}
		select {
		case <-ctx.Done():
			t.Fatalf("after %s, %s still gives %s", waitTimeout, query, last)
		case <-tick.C:
		}
	}
}
