package analysis

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"unicode/utf8"

	"pgregory.net/rapid"
)

// metric is a Metric with the given conditions ("" = not set).
func metric(success, failure string) Metric {
	m := Metric{Name: "error_rate", Query: "q", ConsecutiveErrorLimit: DefaultConsecutiveErrorLimit}
	if success != "" {
		m.Success, m.HasSuccess = MustParseCondition(success), true
	}
	if failure != "" {
		m.Failure, m.HasFailure = MustParseCondition(failure), true
	}
	return m
}

func TestMeasure(t *testing.T) {
	both := metric("result < 1", "result >= 5")
	tests := []struct {
		name     string
		m        Metric
		result   []float64
		queryErr error
		want     Phase
		detail   string
	}{
		{"both, success holds", both, []float64{0.5}, nil, PhaseSuccessful,
			`result [0.5] meets success condition "result < 1"`},
		{"both, failure holds", both, []float64{7}, nil, PhaseFailed,
			`result [7] meets failure condition "result >= 5"`},
		{"both, neither holds", both, []float64{3}, nil, PhaseInconclusive,
			`result [3] meets neither success condition "result < 1" nor failure condition "result >= 5"`},
		{"both hold: failure wins", metric("result > 0", "result > 1"), []float64{2}, nil, PhaseFailed,
			`result [2] meets failure condition "result > 1"`},
		{"only failure, holds", metric("", "result >= 5"), []float64{5}, nil, PhaseFailed,
			`result [5] meets failure condition "result >= 5"`},
		{"only failure, does not hold", metric("", "result >= 5"), []float64{1}, nil, PhaseSuccessful,
			`result [1] does not meet failure condition "result >= 5"`},
		{"only success, holds", metric("result < 1", ""), []float64{0}, nil, PhaseSuccessful,
			`result [0] meets success condition "result < 1"`},
		{"only success, does not hold", metric("result < 1", ""), []float64{1}, nil, PhaseFailed,
			`result [1] does not meet success condition "result < 1"`},
		{"no condition", metric("", ""), []float64{1, 2}, nil, PhaseInconclusive,
			`result [1 2], no success or failure condition`},
		{"NaN meets neither", both, []float64{nan}, nil, PhaseInconclusive,
			`result [NaN] meets neither success condition "result < 1" nor failure condition "result >= 5"`},
		{"query error", both, nil, errors.New("analysis: prometheus query: HTTP status 503"), PhaseError,
			`query failed: analysis: prometheus query: HTTP status 503`},
		{"empty result", metric("result < 1", ""), nil, nil, PhaseError,
			`analysis: condition "result < 1": empty result`},
		{"empty result, both conditions", both, []float64{}, nil, PhaseError,
			`analysis: condition "result >= 5": empty result; analysis: condition "result < 1": empty result`},
		{"empty result allowed", metric("len(result) == 0 || result < 1", ""), nil, nil, PhaseSuccessful,
			`result [] meets success condition "len(result) == 0 || result < 1"`},
		{"many values", metric("len(result) > 3", ""), []float64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}, nil, PhaseSuccessful,
			`result [1 2 3 4 5 6 7 8 …] (10 values) meets success condition "len(result) > 3"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, detail := Measure(tc.m, tc.result, tc.queryErr)
			if got != tc.want || detail != tc.detail {
				t.Errorf("Measure = %s, %q\n want %s, %q", got, detail, tc.want, tc.detail)
			}
		})
	}
}

func TestMeasureDetailIsBounded(t *testing.T) {
	long := errors.New(strings.Repeat("é", 400)) // two bytes each
	_, detail := Measure(metric("result < 1", ""), nil, long)
	if len(detail) > MaxDetail || !utf8.ValidString(detail) || !strings.HasSuffix(detail, "…") {
		t.Errorf("detail of %d bytes, valid UTF-8 %v: %q", len(detail), utf8.ValidString(detail), detail)
	}
	cond := "result < 1" + strings.Repeat(" ", 400) + "|| result > 2"
	_, detail = Measure(metric(cond, ""), []float64{0}, nil)
	if len(detail) > MaxDetail {
		t.Errorf("detail of %d bytes", len(detail))
	}
	if tl := (Tally{}).Add(PhaseError, strings.Repeat("x", 1000)); len(tl.Last) > MaxDetail {
		t.Errorf("Tally.Last of %d bytes", len(tl.Last))
	}
}

func TestTallyAdd(t *testing.T) {
	type step struct {
		p    Phase
		want Tally
	}
	steps := []step{
		{PhaseSuccessful, Tally{Measured: 1, Successful: 1, ConsecutiveSuccesses: 1, Last: "d0", LastPhase: PhaseSuccessful}},
		{PhaseSuccessful, Tally{Measured: 2, Successful: 2, ConsecutiveSuccesses: 2, Last: "d1", LastPhase: PhaseSuccessful}},
		{PhaseError, Tally{Measured: 2, Successful: 2, Errors: 1, ConsecutiveErrors: 1, Last: "d2", LastPhase: PhaseError}},
		{PhaseError, Tally{Measured: 2, Successful: 2, Errors: 2, ConsecutiveErrors: 2, Last: "d3", LastPhase: PhaseError}},
		{PhaseSuccessful, Tally{Measured: 3, Successful: 3, Errors: 2, ConsecutiveSuccesses: 1, Last: "d4", LastPhase: PhaseSuccessful}},
		{PhaseFailed, Tally{Measured: 4, Successful: 3, Failed: 1, Errors: 2, Last: "d5", LastPhase: PhaseFailed}},
		{PhaseError, Tally{Measured: 4, Successful: 3, Failed: 1, Errors: 3, ConsecutiveErrors: 1, Last: "d6", LastPhase: PhaseError}},
		{PhaseInconclusive, Tally{Measured: 5, Successful: 3, Failed: 1, Inconclusive: 1, Errors: 3, Last: "d7", LastPhase: PhaseInconclusive}},
		{PhaseSuccessful, Tally{Measured: 6, Successful: 4, Failed: 1, Inconclusive: 1, Errors: 3, ConsecutiveSuccesses: 1, Last: "d8", LastPhase: PhaseSuccessful}},
		{"bogus", Tally{Measured: 6, Successful: 4, Failed: 1, Inconclusive: 1, Errors: 4, ConsecutiveErrors: 1, Last: "d9", LastPhase: PhaseError}},
	}
	var tl Tally
	for i, s := range steps {
		before := tl
		tl = tl.Add(s.p, "d"+string(rune('0'+i)))
		if tl != s.want {
			t.Fatalf("step %d: Add(%s) = %+v\n want %+v", i, s.p, tl, s.want)
		}
		if before == tl {
			t.Fatalf("step %d: Add changed nothing", i)
		}
	}
}

func TestTallyJSON(t *testing.T) {
	tl := Tally{Measured: 3, Successful: 1, Failed: 1, Inconclusive: 1, Errors: 2, ConsecutiveErrors: 1, ConsecutiveSuccesses: 0, Last: "x", LastPhase: PhaseError}
	b, err := json.Marshal(tl)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"measured":3,"successful":1,"failed":1,"inconclusive":1,"errors":2,"consecutive_errors":1,"consecutive_successes":0,"last":"x","last_phase":"error"}`
	if string(b) != want {
		t.Fatalf("Marshal = %s\n want %s", b, want)
	}
	var back Tally
	if err := json.Unmarshal(b, &back); err != nil || back != tl {
		t.Fatalf("round trip = %+v, %v", back, err)
	}
}

func TestJudge(t *testing.T) {
	base := metric("result < 1", "")
	with := func(f func(*Metric)) Metric { m := base; f(&m); return m }
	tests := []struct {
		name string
		m    Metric
		t    Tally
		want Outcome
	}{
		{"nothing yet", base, Tally{}, OutcomeRunning},
		{"failures within limit", with(func(m *Metric) { m.FailureLimit = 2 }), Tally{Measured: 2, Failed: 2}, OutcomeRunning},
		{"failures beyond limit", with(func(m *Metric) { m.FailureLimit = 2 }), Tally{Measured: 3, Failed: 3}, OutcomeFailed},
		{"default failure limit 0", base, Tally{Measured: 1, Failed: 1}, OutcomeFailed},
		{"no failure limit", with(func(m *Metric) { m.FailureLimit = -1 }), Tally{Measured: 100, Failed: 100}, OutcomeRunning},
		{"errors within limit", base, Tally{Errors: 4, ConsecutiveErrors: 4}, OutcomeRunning},
		{"errors beyond limit", base, Tally{Errors: 5, ConsecutiveErrors: 5}, OutcomeFailed},
		{"errors not consecutive", base, Tally{Measured: 1, Successful: 1, Errors: 9, ConsecutiveErrors: 2}, OutcomeRunning},
		{"zero error limit", with(func(m *Metric) { m.ConsecutiveErrorLimit = 0 }), Tally{Errors: 1, ConsecutiveErrors: 1}, OutcomeFailed},
		{"errors fail even without failure limit", with(func(m *Metric) { m.FailureLimit = -1 }), Tally{Errors: 5, ConsecutiveErrors: 5}, OutcomeFailed},
		{"inconclusive beyond limit", base, Tally{Measured: 1, Inconclusive: 1}, OutcomeInconclusive},
		{"inconclusive within limit", with(func(m *Metric) { m.InconclusiveLimit = 1 }), Tally{Measured: 1, Inconclusive: 1}, OutcomeRunning},
		{"failed before inconclusive", base, Tally{Measured: 2, Failed: 1, Inconclusive: 1}, OutcomeFailed},
		{"count reached", with(func(m *Metric) { m.Count = 3 }), Tally{Measured: 3, Successful: 3}, OutcomeSuccessful},
		{"count reached with tolerated failures", with(func(m *Metric) { m.Count = 3; m.FailureLimit = 1 }), Tally{Measured: 3, Successful: 2, Failed: 1}, OutcomeSuccessful},
		{"count not reached: errors do not count", with(func(m *Metric) { m.Count = 3 }), Tally{Measured: 2, Successful: 2, Errors: 1}, OutcomeRunning},
		{"no count: runs", base, Tally{Measured: 50, Successful: 50, ConsecutiveSuccesses: 50}, OutcomeRunning},
		{"consecutive successes reached", with(func(m *Metric) { m.ConsecutiveSuccessLimit = 3 }), Tally{Measured: 3, Successful: 3, ConsecutiveSuccesses: 3}, OutcomeSuccessful},
		{"consecutive successes not reached", with(func(m *Metric) { m.ConsecutiveSuccessLimit = 3; m.FailureLimit = 5 }), Tally{Measured: 5, Successful: 4, Failed: 1, ConsecutiveSuccesses: 2}, OutcomeRunning},
		{"failure beats consecutive successes", with(func(m *Metric) { m.ConsecutiveSuccessLimit = 1 }), Tally{Measured: 2, Successful: 1, Failed: 1, ConsecutiveSuccesses: 1}, OutcomeFailed},
		{"dry run judged the same", with(func(m *Metric) { m.DryRun = true }), Tally{Measured: 1, Failed: 1}, OutcomeFailed},
	}
	for _, tc := range tests {
		if got := Judge(tc.m, tc.t); got != tc.want {
			t.Errorf("%s: Judge = %s, want %s", tc.name, got, tc.want)
		}
	}
}

func TestDecide(t *testing.T) {
	counted := metric("result < 1", "")
	counted.Count = 1
	dry := counted
	dry.DryRun = true
	var (
		running    = Tally{}
		successful = Tally{Measured: 1, Successful: 1, ConsecutiveSuccesses: 1}
		failed     = Tally{Measured: 1, Failed: 1}
		inconcl    = Tally{Measured: 1, Inconclusive: 1}
	)
	tests := []struct {
		name string
		ms   []Metric
		ts   []Tally
		want Outcome
	}{
		{"no metrics", nil, nil, OutcomeSuccessful},
		{"only dry-run metrics", []Metric{dry}, []Tally{failed}, OutcomeSuccessful},
		{"all successful", []Metric{counted, counted}, []Tally{successful, successful}, OutcomeSuccessful},
		{"one running", []Metric{counted, counted}, []Tally{successful, running}, OutcomeRunning},
		{"one failed", []Metric{counted, counted}, []Tally{running, failed}, OutcomeFailed},
		{"failed beats inconclusive", []Metric{counted, counted}, []Tally{inconcl, failed}, OutcomeFailed},
		{"inconclusive beats running", []Metric{counted, counted}, []Tally{inconcl, running}, OutcomeInconclusive},
		{"dry run failure ignored", []Metric{counted, dry}, []Tally{successful, failed}, OutcomeSuccessful},
		{"dry run inconclusive ignored", []Metric{counted, dry}, []Tally{running, inconcl}, OutcomeRunning},
		{"missing tally is zero", []Metric{counted, counted}, []Tally{successful}, OutcomeRunning},
	}
	for _, tc := range tests {
		if got := Decide(tc.ms, tc.ts); got != tc.want {
			t.Errorf("%s: Decide = %s, want %s", tc.name, got, tc.want)
		}
	}
}

func TestMetricValidate(t *testing.T) {
	good := metric("result < 1", "")
	if err := good.Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}
	tests := []struct {
		change func(*Metric)
		want   string
	}{
		{func(m *Metric) { m.Name = "" }, `analysis: metric "": no name`},
		{func(m *Metric) { m.Query = " " }, `analysis: metric "error_rate": no query`},
		{func(m *Metric) { m.Success = Condition{} }, `analysis: metric "error_rate": success condition not parsed`},
		{func(m *Metric) { m.HasFailure = true }, `analysis: metric "error_rate": failure condition not parsed`},
		{func(m *Metric) { m.Count = -1 }, `analysis: metric "error_rate": count -1 is negative`},
		{func(m *Metric) { m.FailureLimit = -2 }, `analysis: metric "error_rate": failure limit -2 is below -1`},
		{func(m *Metric) { m.InconclusiveLimit = -1 }, `analysis: metric "error_rate": inconclusive limit -1 is negative`},
		{func(m *Metric) { m.ConsecutiveErrorLimit = -1 }, `analysis: metric "error_rate": consecutive error limit -1 is negative`},
		{func(m *Metric) { m.ConsecutiveSuccessLimit = -1 }, `analysis: metric "error_rate": consecutive success limit -1 is negative`},
	}
	for _, tc := range tests {
		m := good
		tc.change(&m)
		if err := m.Validate(); err == nil || err.Error() != tc.want {
			t.Errorf("Validate = %v, want %s", err, tc.want)
		}
	}
}

// Properties.

var phases = []Phase{PhaseSuccessful, PhaseFailed, PhaseInconclusive, PhaseError}

func genMetric(t *rapid.T, label string) Metric {
	return Metric{
		Name:                    label,
		Query:                   "q",
		Count:                   rapid.IntRange(0, 6).Draw(t, label+"_count"),
		FailureLimit:            rapid.IntRange(-1, 3).Draw(t, label+"_failure_limit"),
		InconclusiveLimit:       rapid.IntRange(0, 3).Draw(t, label+"_inconclusive_limit"),
		ConsecutiveErrorLimit:   rapid.IntRange(0, 4).Draw(t, label+"_error_limit"),
		ConsecutiveSuccessLimit: rapid.IntRange(0, 4).Draw(t, label+"_success_limit"),
		DryRun:                  rapid.Bool().Draw(t, label+"_dry_run"),
	}
}

func genTally(t *rapid.T, label string) Tally {
	var tl Tally
	for _, p := range rapid.SliceOfN(rapid.SampledFrom(phases), 0, 12).Draw(t, label+"_phases") {
		tl = tl.Add(p, string(p))
	}
	return tl
}

// Once a metric has more failures than it tolerates, no further
// measurement makes it anything but failed, successful least of all.
func TestJudgeFailureIsFinalProperty(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		m := genMetric(t, "m")
		var tl Tally
		failedAt := -1
		for i, p := range rapid.SliceOfN(rapid.SampledFrom(phases), 1, 40).Draw(t, "phases") {
			tl = tl.Add(p, "")
			got := Judge(m, tl)
			if failedAt < 0 && m.FailureLimit >= 0 && tl.Failed > m.FailureLimit {
				failedAt = i
			}
			if failedAt >= 0 && got != OutcomeFailed {
				t.Fatalf("measurement %d: Judge = %s after failing at %d (tally %+v)", i, got, failedAt, tl)
			}
		}
	})
}

// The tally's counters agree with each other whatever the sequence.
func TestTallyInvariantsProperty(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		ps := rapid.SliceOfN(rapid.SampledFrom(phases), 0, 40).Draw(t, "phases")
		var tl Tally
		for _, p := range ps {
			tl = tl.Add(p, "")
		}
		if tl.Measured != tl.Successful+tl.Failed+tl.Inconclusive || tl.Measured+tl.Errors != len(ps) {
			t.Fatalf("counts disagree: %+v after %d measurements", tl, len(ps))
		}
		trailing := func(want Phase) int {
			n := 0
			for i := len(ps) - 1; i >= 0 && ps[i] == want; i-- {
				n++
			}
			return n
		}
		if tl.ConsecutiveErrors != trailing(PhaseError) || tl.ConsecutiveSuccesses != trailing(PhaseSuccessful) {
			t.Fatalf("consecutive counts wrong: %+v after %v", tl, ps)
		}
	})
}

// Dry-run metrics never change Decide: removing them, or giving them any
// other tally, gives the same outcome.
func TestDecideIgnoresDryRunProperty(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		n := rapid.IntRange(0, 5).Draw(t, "n")
		var ms, real []Metric
		var ts, realTs, otherTs []Tally
		for i := range n {
			label := "m" + string(rune('0'+i))
			m, tl := genMetric(t, label), genTally(t, label)
			ms, ts = append(ms, m), append(ts, tl)
			if m.DryRun {
				otherTs = append(otherTs, genTally(t, label+"_other"))
				continue
			}
			real, realTs, otherTs = append(real, m), append(realTs, tl), append(otherTs, tl)
		}
		got := Decide(ms, ts)
		if without := Decide(real, realTs); got != without {
			t.Fatalf("Decide = %s with dry-run metrics, %s without", got, without)
		}
		if other := Decide(ms, otherTs); got != other {
			t.Fatalf("Decide = %s, %s with other dry-run tallies", got, other)
		}
	})
}
