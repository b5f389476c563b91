package analysis

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"
)

// DefaultConsecutiveErrorLimit is Argo's default for
// Metric.ConsecutiveErrorLimit. The zero Metric has a limit of 0 (the
// first error fails it); the config package fills the default in.
const DefaultConsecutiveErrorLimit = 4

// MaxDetail bounds the human text of a measurement, in bytes.
const MaxDetail = 300

// maxDetailValues is how many values a measurement's text shows.
const maxDetailValues = 8

// Metric is one analysis metric as the fleet file configures it.
type Metric struct {
	Name  string
	Query string
	// Success and Failure are the conditions; each counts only when its
	// Has flag is set.
	Success, Failure       Condition
	HasSuccess, HasFailure bool
	// Count is the number of measurements to take (errors do not count);
	// 0 measures until the step ends.
	Count int
	// FailureLimit is the number of failed measurements tolerated; -1
	// tolerates any number.
	FailureLimit int
	// InconclusiveLimit is the number of inconclusive measurements
	// tolerated.
	InconclusiveLimit int
	// ConsecutiveErrorLimit is the number of errors in a row tolerated
	// (see DefaultConsecutiveErrorLimit).
	ConsecutiveErrorLimit int
	// ConsecutiveSuccessLimit, when above 0, makes the metric successful
	// once that many measurements in a row were successful.
	ConsecutiveSuccessLimit int
	// DryRun metrics are measured and judged but never decide.
	DryRun bool
}

// Validate reports the first setting of m that makes no sense.
func (m Metric) Validate() error {
	var problem string
	switch {
	case m.Name == "":
		problem = "no name"
	case strings.TrimSpace(m.Query) == "":
		problem = "no query"
	case m.HasSuccess && m.Success.IsZero():
		problem = "success condition not parsed"
	case m.HasFailure && m.Failure.IsZero():
		problem = "failure condition not parsed"
	case m.Count < 0:
		problem = fmt.Sprintf("count %d is negative", m.Count)
	case m.FailureLimit < -1:
		problem = fmt.Sprintf("failure limit %d is below -1", m.FailureLimit)
	case m.InconclusiveLimit < 0:
		problem = fmt.Sprintf("inconclusive limit %d is negative", m.InconclusiveLimit)
	case m.ConsecutiveErrorLimit < 0:
		problem = fmt.Sprintf("consecutive error limit %d is negative", m.ConsecutiveErrorLimit)
	case m.ConsecutiveSuccessLimit < 0:
		problem = fmt.Sprintf("consecutive success limit %d is negative", m.ConsecutiveSuccessLimit)
	default:
		return nil
	}
	return fmt.Errorf("analysis: metric %q: %s", m.Name, problem)
}

// Phase is the classification of one measurement.
type Phase string

// The phases of a measurement.
const (
	PhaseSuccessful   Phase = "successful"
	PhaseFailed       Phase = "failed"
	PhaseInconclusive Phase = "inconclusive"
	PhaseError        Phase = "error"
)

// Measure classifies one query result of m, as Argo does:
//
//   - error when queryErr is not nil or a set condition cannot be
//     evaluated (an empty result, an index out of range);
//   - failed when the failure condition holds, whether or not the success
//     condition holds too;
//   - successful when the success condition holds;
//   - otherwise, with both conditions set, inconclusive; with only a
//     failure condition, successful; with only a success condition,
//     failed.
//
// With neither condition set a measurement is inconclusive (Argo counts it
// successful): a metric that cannot fail cannot pass either.
//
// The text says what was measured and why, in at most MaxDetail bytes.
func Measure(m Metric, result []float64, queryErr error) (Phase, string) {
	if queryErr != nil {
		return PhaseError, clip("query failed: " + queryErr.Error())
	}
	success, successErr := evalIf(m.HasSuccess, m.Success, result)
	failure, failureErr := evalIf(m.HasFailure, m.Failure, result)
	if err := errors.Join(failureErr, successErr); err != nil {
		return PhaseError, clip(strings.ReplaceAll(err.Error(), "\n", "; "))
	}
	values := formatValues(result)
	switch {
	case failure:
		return PhaseFailed, clip(fmt.Sprintf("%s meets failure condition %q", values, m.Failure))
	case success:
		return PhaseSuccessful, clip(fmt.Sprintf("%s meets success condition %q", values, m.Success))
	case m.HasSuccess && m.HasFailure:
		return PhaseInconclusive, clip(fmt.Sprintf("%s meets neither success condition %q nor failure condition %q", values, m.Success, m.Failure))
	case m.HasFailure:
		return PhaseSuccessful, clip(fmt.Sprintf("%s does not meet failure condition %q", values, m.Failure))
	case m.HasSuccess:
		return PhaseFailed, clip(fmt.Sprintf("%s does not meet success condition %q", values, m.Success))
	}
	return PhaseInconclusive, clip(values + ", no success or failure condition")
}

func evalIf(set bool, c Condition, result []float64) (bool, error) {
	if !set {
		return false, nil
	}
	return c.Eval(result)
}

// formatValues shows the first values of a result: "result [0.5 NaN]",
// "result []", "result [1 2 3 4 5 6 7 8 …] (12 values)".
func formatValues(result []float64) string {
	var b strings.Builder
	b.WriteString("result [")
	for i, v := range result {
		if i == maxDetailValues {
			fmt.Fprintf(&b, " …] (%d values)", len(result))
			return b.String()
		}
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(strconv.FormatFloat(v, 'g', -1, 64))
	}
	b.WriteByte(']')
	return b.String()
}

// clip shortens s to at most MaxDetail bytes, on a rune boundary.
func clip(s string) string { return clipTo(s, MaxDetail) }

func clipTo(s string, n int) string {
	const ellipsis = "…"
	if len(s) <= n {
		return s
	}
	cut := n - len(ellipsis)
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + ellipsis
}

// Tally is the measurement bookkeeping of one metric. The zero Tally is
// the tally of a metric not measured yet.
type Tally struct {
	// Measured counts the measurements that were not errors, as Argo's
	// count does: Successful + Failed + Inconclusive.
	Measured     int `json:"measured"`
	Successful   int `json:"successful"`
	Failed       int `json:"failed"`
	Inconclusive int `json:"inconclusive"`
	Errors       int `json:"errors"`
	// ConsecutiveErrors is reset by any other phase.
	ConsecutiveErrors int `json:"consecutive_errors"`
	// ConsecutiveSuccesses is reset by any other phase, errors included.
	ConsecutiveSuccesses int `json:"consecutive_successes"`
	// Last is the text of the last measurement, LastPhase its phase.
	Last      string `json:"last,omitempty"`
	LastPhase Phase  `json:"last_phase,omitempty"`
}

// Add returns t with one more measurement of phase p and text detail
// (clipped to MaxDetail bytes). A phase other than the four counts as an
// error.
func (t Tally) Add(p Phase, detail string) Tally {
	switch p {
	case PhaseSuccessful:
		t.Successful++
		t.ConsecutiveSuccesses++
	case PhaseFailed:
		t.Failed++
	case PhaseInconclusive:
		t.Inconclusive++
	default:
		p = PhaseError
		t.Errors++
		t.ConsecutiveErrors++
	}
	if p != PhaseError {
		t.Measured++
		t.ConsecutiveErrors = 0
	}
	if p != PhaseSuccessful {
		t.ConsecutiveSuccesses = 0
	}
	t.Last, t.LastPhase = clip(detail), p
	return t
}

// Outcome is the state of one metric, or of a whole analysis.
type Outcome string

// The outcomes.
const (
	OutcomeRunning      Outcome = "running"
	OutcomeSuccessful   Outcome = "successful"
	OutcomeFailed       Outcome = "failed"
	OutcomeInconclusive Outcome = "inconclusive"
)

// Judge applies m's limits to its tally, in this order:
//
//   - failed when Failed > FailureLimit (unless FailureLimit is -1) or
//     ConsecutiveErrors > ConsecutiveErrorLimit;
//   - inconclusive when Inconclusive > InconclusiveLimit;
//   - successful when ConsecutiveSuccessLimit > 0 and ConsecutiveSuccesses
//     reached it, or when Count > 0 and Measured reached it;
//   - running otherwise: the caller measures again, and decides what the
//     end of the step means for a metric still running.
//
// A dry-run metric is judged the same way; Decide ignores it.
func Judge(m Metric, t Tally) Outcome {
	switch {
	case m.FailureLimit >= 0 && t.Failed > m.FailureLimit:
		return OutcomeFailed
	case t.ConsecutiveErrors > m.ConsecutiveErrorLimit:
		return OutcomeFailed
	case t.Inconclusive > m.InconclusiveLimit:
		return OutcomeInconclusive
	case m.ConsecutiveSuccessLimit > 0 && t.ConsecutiveSuccesses >= m.ConsecutiveSuccessLimit:
		return OutcomeSuccessful
	case m.Count > 0 && t.Measured >= m.Count:
		return OutcomeSuccessful
	}
	return OutcomeRunning
}

// Decide combines the metrics of one analysis; ts[i] is the tally of
// ms[i] (a missing tally is the zero Tally). It is failed when a metric
// that is not a dry run failed; else inconclusive when one is
// inconclusive; else successful when all of them are successful (also
// when there are none); else running.
func Decide(ms []Metric, ts []Tally) Outcome {
	inconclusive, running := false, false
	for i, m := range ms {
		if m.DryRun {
			continue
		}
		var t Tally
		if i < len(ts) {
			t = ts[i]
		}
		switch Judge(m, t) {
		case OutcomeFailed:
			return OutcomeFailed
		case OutcomeInconclusive:
			inconclusive = true
		case OutcomeRunning:
			running = true
		}
	}
	switch {
	case inconclusive:
		return OutcomeInconclusive
	case running:
		return OutcomeRunning
	}
	return OutcomeSuccessful
}
