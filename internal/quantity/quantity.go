// Package quantity is the count-or-percentage value of fleet settings such
// as max_surge ("1", "25%"). It is shared by the config decoder and the
// replicated state, so it owns its JSON encoding: {"value": N,
// "percent": bool}, stable across releases.
package quantity

import (
	"fmt"
	"math"
	"strconv"
	"strings"
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
