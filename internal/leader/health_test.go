package leader

import (
	"testing"
	"time"

	"github.com/immutd/immutd/internal/reconcile"
)

func TestHealthClockFollowsVerdicts(t *testing.T) {
	hc := newHealthClock()
	t0 := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
	step := func(s int, h reconcile.Health) healthTimes {
		return hc.observe(map[string]Judgement{"a": {Health: h}}, at(s))["a"]
	}
	step(0, reconcile.Starting)
	if ht := step(1, reconcile.Healthy); !ht.healthySince.Equal(at(1)) || len(ht.failures) != 0 {
		t.Fatalf("healthy: %+v", ht)
	}
	if ht := step(2, reconcile.Healthy); !ht.healthySince.Equal(at(1)) {
		t.Fatalf("a second healthy verdict moved the clock: %+v", ht)
	}
	ht := step(3, reconcile.Unhealthy)
	if !ht.unhealthySince.Equal(at(3)) || !ht.healthySince.IsZero() || len(ht.failures) != 1 || !ht.failures[0].Equal(at(3)) {
		t.Fatalf("unhealthy: %+v", ht)
	}
	// Flapping: every turn from healthy to unhealthy is a failure, at most
	// maxFailures kept.
	for i := range 2 * maxFailures {
		step(10+2*i, reconcile.Healthy)
		step(11+2*i, reconcile.Unhealthy)
	}
	ht = step(200, reconcile.Unhealthy)
	if len(ht.failures) != maxFailures || !ht.failures[maxFailures-1].Equal(at(11+2*(2*maxFailures-1))) {
		t.Fatalf("failures %d, last %v", len(ht.failures), ht.failures[len(ht.failures)-1])
	}
	// Starting to unhealthy (never healthy in between) is no failure.
	hc.observe(map[string]Judgement{"b": {Health: reconcile.Starting}}, at(300))
	if ht := hc.observe(map[string]Judgement{"b": {Health: reconcile.Unhealthy}}, at(301))["b"]; len(ht.failures) != 0 {
		t.Fatalf("a never-healthy instance failed: %+v", ht)
	}
	// An instance no longer judged is forgotten.
	if out := hc.observe(map[string]Judgement{}, at(400)); len(out) != 0 || len(hc.by) != 0 {
		t.Fatalf("forgotten instances kept: %v", hc.by)
	}
}
