package leader

import (
	"sync"
	"time"

	"github.com/immutd/immutd/internal/reconcile"
)

// maxFailures bounds the failure times kept per instance: a fleet's flap
// threshold is at most this.
const maxFailures = 16

// healthClock follows every instance's verdict from pass to pass: since
// when it has been healthy (admission waits min_ready from it, a recovery
// healthy_delay), since when it has been unhealthy (kills for health wait
// for the fleet's settle window from it), and when it last turned from
// healthy to unhealthy (the flap detector counts those). It is the
// leader's memory: a new leader starts afresh, which only ever delays
// what it does.
type healthClock struct {
	mu sync.Mutex
	by map[string]*healthTimes
}

// healthTimes is what the clock knows of one instance.
type healthTimes struct {
	last           reconcile.Health
	healthySince   time.Time
	unhealthySince time.Time
	failures       []time.Time
}

func newHealthClock() *healthClock { return &healthClock{by: map[string]*healthTimes{}} }

// observe takes the verdicts of a pass into account and returns a copy
// of the times of every judged instance.
func (hc *healthClock) observe(judged map[string]Judgement, now time.Time) map[string]healthTimes {
	hc.mu.Lock()
	defer hc.mu.Unlock()
	for id := range hc.by {
		if _, ok := judged[id]; !ok {
			delete(hc.by, id) // gone, or no agent judges it any more
		}
	}
	out := make(map[string]healthTimes, len(judged))
	for id, j := range judged {
		ht := hc.by[id]
		if ht == nil {
			ht = &healthTimes{}
			hc.by[id] = ht
		}
		ht.step(j.Health, now)
		cp := *ht
		cp.failures = append([]time.Time(nil), ht.failures...)
		out[id] = cp
	}
	return out
}

// step moves one instance's times to its verdict of now.
func (ht *healthTimes) step(h reconcile.Health, now time.Time) {
	if h == ht.last {
		return
	}
	switch h {
	case reconcile.Healthy:
		ht.healthySince, ht.unhealthySince = now, time.Time{}
	case reconcile.Unhealthy:
		if ht.last == reconcile.Healthy {
			ht.failures = append(ht.failures, now)
			if len(ht.failures) > maxFailures {
				ht.failures = ht.failures[len(ht.failures)-maxFailures:]
			}
		}
		ht.healthySince, ht.unhealthySince = time.Time{}, now
	default:
		ht.healthySince, ht.unhealthySince = time.Time{}, time.Time{}
	}
	ht.last = h
}
