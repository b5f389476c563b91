// Package quantity is the count-or-percentage value of fleet settings such
// as max_surge ("1", "25%"), and the count-per-window rate of kill-rate
// limits ("5/10m"). It is shared by the config decoder and the
// replicated state, so it owns its JSON encoding: {"value": N,
// "percent": bool}, stable across releases.
package quantity

import (
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Q is a count (Value, Percent false) or a percentage of a fleet's size.
type Q struct {
	Value   int  `json:"value"`
	Percent bool `json:"percent"`
}

// Count is a plain count.
func Count(n int) Q { return Q{Value: n} }

// Percent is a percentage of the fleet size.
func Percent(p int) Q { return Q{Value: p, Percent: true} }

// Parse parses "3" or "25%".
func Parse(s string) (Q, error) {
	s = strings.TrimSpace(s)
	pct := strings.HasSuffix(s, "%")
	n, err := strconv.Atoi(strings.TrimSuffix(s, "%"))
	if err != nil || n < 0 {
		return Q{}, fmt.Errorf("want a non-negative count or a percentage like \"25%%\", got %q", s)
	}
	if pct && n > 100 {
		return Q{}, fmt.Errorf("percentage %q is above 100%%", s)
	}
	return Q{Value: n, Percent: pct}, nil
}

func (q Q) String() string {
	if q.Percent {
		return strconv.Itoa(q.Value) + "%"
	}
	return strconv.Itoa(q.Value)
}

// Resolve turns the quantity into a count for a fleet of the given size.
// Percentages round up when roundUp is set, down otherwise.
func (q Q) Resolve(size int, roundUp bool) int {
	if !q.Percent {
		return q.Value
	}
	f := float64(size) * float64(q.Value) / 100
	if roundUp {
		return int(math.Ceil(f - 1e-9))
	}
	return int(math.Floor(f + 1e-9))
}

// Rate is at most N events in any window of length Per ("5/10m"). The
// zero Rate (Per 0) is unset. Its JSON encoding is {"n": N, "per": ns},
// stable across releases.
type Rate struct {
	N   int           `json:"n"`
	Per time.Duration `json:"per"`
}

// Set reports whether the rate was configured.
func (r Rate) Set() bool { return r.Per > 0 }

// ParseRate parses "N/DURATION", as in "5/10m" or "0/1h".
func ParseRate(s string) (Rate, error) {
	n, per, ok := strings.Cut(strings.TrimSpace(s), "/")
	if !ok {
		return Rate{}, fmt.Errorf("must be a count per duration like \"5/10m\", got %q", s)
	}
	c, err := strconv.Atoi(strings.TrimSpace(n))
	if err != nil || c < 0 {
		return Rate{}, fmt.Errorf("must be a non-negative count, a \"/\" and a window, like \"5/10m\", got %q", s)
	}
	d, err := time.ParseDuration(strings.TrimSpace(per))
	if err != nil || d <= 0 {
		return Rate{}, fmt.Errorf("must have a positive window after the \"/\", like \"5/10m\", got %q", s)
	}
	return Rate{N: c, Per: d}, nil
}

func (r Rate) String() string {
	if !r.Set() {
		return "unset"
	}
	return strconv.Itoa(r.N) + "/" + shortDuration(r.Per)
}

// Left is how many more events the rate allows at now, given the times
// of earlier events (any order): N minus those in the window (now-Per,
// now]. An unset rate allows any number (-1).
func (r Rate) Left(events []time.Time, now time.Time) int {
	if !r.Set() {
		return -1
	}
	from := now.Add(-r.Per)
	n := r.N
	for _, t := range events {
		if t.After(from) && !t.After(now) {
			n--
		}
	}
	return max(n, 0)
}

// NextAt is when the rate allows one more event at the earliest, given
// the earlier events: the moment the oldest event in the window leaves
// it (now when one is allowed already).
func (r Rate) NextAt(events []time.Time, now time.Time) time.Time {
	if !r.Set() || r.Left(events, now) > 0 {
		return now
	}
	from := now.Add(-r.Per)
	var in []time.Time
	for _, t := range events {
		if t.After(from) && !t.After(now) {
			in = append(in, t)
		}
	}
	if r.N == 0 || len(in) < r.N {
		return time.Time{} // a zero rate never allows one
	}
	slices.SortFunc(in, func(a, b time.Time) int { return a.Compare(b) })
	return in[len(in)-r.N].Add(r.Per)
}

// shortDuration writes d without zero units: 10m, not 10m0s.
func shortDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}
