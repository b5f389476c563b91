package probe

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"
)

var t0 = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

// step feeds the machine one event at t0+at: 'S' a success, 'F' a
// failure, 'E' a look at the startup window with no result. want is the
// state after it, changed whether the step changed the state.
type step struct {
	at      time.Duration
	ev      byte
	want    State
	changed bool
}

func TestMachine(t *testing.T) {
	const (
		ms = time.Millisecond
		s  = time.Second
	)
	std := thresholds{healthy: 1, unhealthy: 3, startupTimeout: 60 * s}
	cases := []struct {
		name  string
		th    thresholds
		steps []step
	}{
		{"first success passes with threshold 1", std, []step{
			{0, 'S', Healthy, true},
		}},
		{"startup pass needs healthy_threshold successes in a row", thresholds{healthy: 3, unhealthy: 3, startupTimeout: 60 * s}, []step{
			{0, 'S', Starting, false},
			{250 * ms, 'S', Starting, false},
			{500 * ms, 'F', Starting, false},
			{750 * ms, 'S', Starting, false},
			{1000 * ms, 'S', Starting, false},
			{1250 * ms, 'S', Healthy, true},
		}},
		{"failures while starting never make it unhealthy", thresholds{healthy: 1, unhealthy: 1, startupTimeout: 60 * s}, []step{
			{0, 'F', Starting, false},
			{1 * s, 'F', Starting, false},
			{30 * s, 'F', Starting, false},
			{59*s + 999*ms, 'F', Starting, false},
			{59*s + 999*ms, 'E', Starting, false},
		}},
		{"startup timeout while failing gives never_healthy at the deadline", std, []step{
			{0, 'F', Starting, false},
			{59 * s, 'F', Starting, false},
			{60*s - 1, 'E', Starting, false},
			{60 * s, 'E', NeverHealthy, true},
			{61 * s, 'F', NeverHealthy, false},
		}},
		{"startup timeout noticed by the next failed result", std, []step{
			{0, 'F', Starting, false},
			{61 * s, 'F', NeverHealthy, true},
		}},
		{"no result yet: the window alone does not condemn", std, []step{
			{120 * s, 'E', Starting, false},
			{121 * s, 'F', NeverHealthy, true},
		}},
		{"no result yet: a first success after the window passes", std, []step{
			{120 * s, 'E', Starting, false},
			{121 * s, 'S', Healthy, true},
		}},
		{"a run of successes in progress at the deadline may finish", thresholds{healthy: 3, unhealthy: 3, startupTimeout: 60 * s}, []step{
			{0, 'F', Starting, false},
			{59 * s, 'S', Starting, false},
			{60 * s, 'E', Starting, false},
			{60*s + 250*ms, 'S', Starting, false},
			{60*s + 500*ms, 'S', Healthy, true},
		}},
		{"a flapping check is never_healthy at its next failure after the deadline", thresholds{healthy: 2, unhealthy: 3, startupTimeout: 60 * s}, []step{
			{59 * s, 'S', Starting, false},
			{60 * s, 'E', Starting, false},
			{61 * s, 'F', NeverHealthy, true},
		}},
		{"zero startup timeout: judged by the first failure", thresholds{healthy: 1, unhealthy: 3}, []step{
			{0, 'E', Starting, false},
			{0, 'F', NeverHealthy, true},
		}},
		{"healthy to unhealthy after unhealthy_threshold failures in a row", std, []step{
			{0, 'S', Healthy, true},
			{2 * s, 'F', Healthy, false},
			{4 * s, 'F', Healthy, false},
			{6 * s, 'F', Unhealthy, true},
			{8 * s, 'F', Unhealthy, false},
		}},
		{"a success resets the failure count", std, []step{
			{0, 'S', Healthy, true},
			{2 * s, 'F', Healthy, false},
			{4 * s, 'F', Healthy, false},
			{6 * s, 'S', Healthy, false},
			{8 * s, 'F', Healthy, false},
			{10 * s, 'F', Healthy, false},
			{12 * s, 'F', Unhealthy, true},
		}},
		{"the startup window does not apply to a check that passed", std, []step{
			{0, 'S', Healthy, true},
			{61 * s, 'F', Healthy, false},
			{62 * s, 'E', Healthy, false},
		}},
		{"unhealthy to healthy after healthy_threshold successes in a row", thresholds{healthy: 2, unhealthy: 1, startupTimeout: 60 * s}, []step{
			{0, 'S', Starting, false},
			{1 * s, 'S', Healthy, true},
			{2 * s, 'F', Unhealthy, true},
			{3 * s, 'S', Unhealthy, false},
			{4 * s, 'F', Unhealthy, false},
			{5 * s, 'S', Unhealthy, false},
			{6 * s, 'S', Healthy, true},
		}},
		{"late start: never_healthy recovers with healthy_threshold successes", thresholds{healthy: 2, unhealthy: 1, startupTimeout: 10 * s}, []step{
			{0, 'F', Starting, false},
			{10 * s, 'E', NeverHealthy, true},
			{12 * s, 'S', NeverHealthy, false},
			{14 * s, 'F', NeverHealthy, false},
			{16 * s, 'S', NeverHealthy, false},
			{18 * s, 'S', Healthy, true},
			{20 * s, 'F', Unhealthy, true},
		}},
		{"unhealthy_threshold 1 turns a healthy check unhealthy at once", thresholds{healthy: 1, unhealthy: 1, startupTimeout: 60 * s}, []step{
			{0, 'S', Healthy, true},
			{1 * s, 'F', Unhealthy, true},
			{2 * s, 'S', Healthy, true},
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m := newMachine(KindHTTP, tc.th, t0)
			if m.st.State != Starting || !m.st.Since.Equal(t0) {
				t.Fatalf("new machine: state %s since %v, want starting since %v", m.st.State, m.st.Since, t0)
			}
			lastChange := t0
			for i, st := range tc.steps {
				now := t0.Add(st.at)
				var changed bool
				switch st.ev {
				case 'S', 'F':
					changed = m.observe(Result{Check: "c", Kind: KindHTTP, At: now, OK: st.ev == 'S', Detail: string(st.ev)}, now)
				case 'E':
					changed = m.expire(now)
				default:
					t.Fatalf("step %d: bad event %q", i, st.ev)
				}
				if changed {
					lastChange = now
				}
				if m.st.State != st.want || changed != st.changed {
					t.Fatalf("step %d (%c at %v): state %s changed %v, want %s changed %v", i, st.ev, st.at, m.st.State, changed, st.want, st.changed)
				}
				if !m.st.Since.Equal(lastChange) {
					t.Fatalf("step %d: since %v, want %v", i, m.st.Since, lastChange)
				}
			}
		})
	}
}

func TestMachineCounters(t *testing.T) {
	m := newMachine(KindTCP, thresholds{healthy: 2, unhealthy: 2, startupTimeout: time.Minute}, t0)
	feed := func(at time.Duration, ok bool, detail string) {
		now := t0.Add(at)
		m.observe(Result{Check: "c", Kind: KindTCP, At: now, OK: ok, Detail: detail}, now)
	}
	feed(0, true, "connected")
	feed(time.Second, true, "connected")
	feed(2*time.Second, false, "connection refused")
	if m.st.ConsecutiveFailures != 1 || m.st.ConsecutiveSuccesses != 0 {
		t.Fatalf("after a failure: %+v", m.st)
	}
	if m.st.Last.Detail != "connection refused" || m.st.LastFailure.Detail != "connection refused" {
		t.Fatalf("last results: %+v", m.st)
	}
	feed(3*time.Second, true, "connected")
	if m.st.ConsecutiveFailures != 0 || m.st.ConsecutiveSuccesses != 1 {
		t.Fatalf("after a success: %+v", m.st)
	}
	if m.st.Last.Detail != "connected" || m.st.LastFailure.Detail != "connection refused" || !m.st.LastFailure.At.Equal(t0.Add(2*time.Second)) {
		t.Fatalf("last failure must stay: %+v", m.st)
	}
}

func TestAggregate(t *testing.T) {
	cases := []struct {
		in   []State
		want State
	}{
		{nil, Healthy},
		{[]State{Healthy}, Healthy},
		{[]State{Healthy, Healthy}, Healthy},
		{[]State{Healthy, Starting}, Starting},
		{[]State{Starting, Unhealthy, Healthy}, Unhealthy},
		{[]State{Unhealthy, NeverHealthy}, NeverHealthy},
		{[]State{NeverHealthy, Healthy, Starting}, NeverHealthy},
		{[]State{Starting, Starting}, Starting},
		{[]State{Healthy, Unhealthy}, Unhealthy},
	}
	for _, tc := range cases {
		if got := aggregate(tc.in...); got != tc.want {
			t.Errorf("aggregate(%v) = %s, want %s", tc.in, got, tc.want)
		}
	}
}

func TestNextDue(t *testing.T) {
	epoch := t0
	const s = time.Second
	cases := []struct {
		name     string
		prev     time.Duration
		now      time.Duration
		first    time.Duration
		interval time.Duration
		phase    time.Duration
		starting bool
		want     time.Duration
	}{
		{"starting, first probe: the first gap", 10 * s, 10 * s, 10 * s, 2 * s, 0, true, 10*s + startingFirstGap},
		{"starting, 60ms in: half the age", 10*s + 60*time.Millisecond, 10*s + 60*time.Millisecond, 10 * s, 2 * s, 0, true, 10*s + 90*time.Millisecond},
		{"starting, long in: capped", 10 * s, 10 * s, 0, 2 * s, 0, true, 10*s + startingInterval},
		{"starting with a shorter interval", 10 * s, 10 * s, 0, startingInterval / 2, 0, true, 10*s + startingInterval/2},
		{"steady on its grid", 10*s + 300*time.Millisecond, 10*s + 301*time.Millisecond, 0, 2 * s, 300 * time.Millisecond, false, 12*s + 300*time.Millisecond},
		{"steady joins its grid, gap below interval", 10*s + 100*time.Millisecond, 10*s + 101*time.Millisecond, 0, 2 * s, 300 * time.Millisecond, false, 10*s + 300*time.Millisecond},
		{"steady joins its grid, gap just under interval", 10*s + 500*time.Millisecond, 10*s + 501*time.Millisecond, 0, 2 * s, 300 * time.Millisecond, false, 12*s + 300*time.Millisecond},
		{"behind schedule: at once, no burst", 10 * s, 13 * s, 0, 2 * s, 0, false, 13 * s},
		{"starting behind schedule", 10 * s, 11 * s, 0, 2 * s, 0, true, 11 * s},
	}
	for _, tc := range cases {
		got := nextDue(epoch.Add(tc.prev), epoch.Add(tc.now), epoch, epoch.Add(tc.first), tc.interval, tc.phase, tc.starting)
		if want := epoch.Add(tc.want); !got.Equal(want) {
			t.Errorf("%s: got +%v, want +%v", tc.name, got.Sub(epoch), tc.want)
		}
	}

	// Whatever the phase and the previous due time, the next steady probe
	// comes strictly later and at most one interval later, on the grid.
	r := rand.New(rand.NewPCG(1, 2))
	for i := range 10000 {
		interval := time.Duration(1 + r.Int64N(int64(10*s)))
		phase := time.Duration(r.Int64N(int64(interval)))
		prev := epoch.Add(time.Duration(r.Int64N(int64(time.Hour))))
		got := nextDue(prev, prev, epoch, epoch, interval, phase, false)
		gap := got.Sub(prev)
		if gap <= 0 || gap > interval || got.Sub(epoch)%interval != phase {
			t.Fatalf("case %d: interval %v phase %v prev +%v: next +%v (gap %v)", i, interval, phase, prev.Sub(epoch), got.Sub(epoch), gap)
		}
	}
}

func TestPhaseSpread(t *testing.T) {
	interval := 2 * time.Second
	seen := make(map[time.Duration]bool)
	for i := range 100 {
		ph := phaseOf(fmt.Sprintf("web-%d", i), "ready", interval)
		if ph < 0 || ph >= interval {
			t.Fatalf("phase %v out of [0, %v)", ph, interval)
		}
		if ph != phaseOf(fmt.Sprintf("web-%d", i), "ready", interval) {
			t.Fatal("phase is not stable")
		}
		seen[ph/(interval/10)] = true
	}
	if len(seen) < 8 {
		t.Fatalf("100 phases fall into only %d of 10 slices of the interval", len(seen))
	}
}

func TestHistoryBounded(t *testing.T) {
	var h history
	if got := h.results(); len(got) != 0 {
		t.Fatalf("empty history: %v", got)
	}
	// 300 results: every third one fails.
	for i := range 300 {
		h.add(Result{Check: "c", OK: i%3 != 0, Detail: fmt.Sprint(i)})
	}
	got := h.results()
	if len(got) != keepSuccesses+keepFailures {
		t.Fatalf("kept %d results, want %d", len(got), keepSuccesses+keepFailures)
	}
	var succ, fail []int
	prev := 1 << 30
	for _, r := range got {
		var n int
		fmt.Sscan(r.Detail, &n)
		if n >= prev {
			t.Fatalf("not newest first: %d after %d", n, prev)
		}
		prev = n
		if r.OK {
			succ = append(succ, n)
		} else {
			fail = append(fail, n)
		}
	}
	// The newest successes are 299, 298, 296, 295, ...; failures 297, 294, ...
	if succ[0] != 299 || succ[len(succ)-1] != 286 || len(succ) != keepSuccesses {
		t.Fatalf("successes kept: %v", succ)
	}
	if fail[0] != 297 || fail[len(fail)-1] != 150 || len(fail) != keepFailures {
		t.Fatalf("failures kept: %v", fail)
	}
	if cap(h.succ.buf) != keepSuccesses || cap(h.fail.buf) != keepFailures {
		t.Fatalf("ring capacities %d, %d", cap(h.succ.buf), cap(h.fail.buf))
	}

	// Partly filled rings merge too.
	var p history
	p.add(Result{OK: true, Detail: "a"})
	p.add(Result{OK: false, Detail: "b"})
	p.add(Result{OK: true, Detail: "c"})
	if got := p.results(); len(got) != 3 || got[0].Detail != "c" || got[1].Detail != "b" || got[2].Detail != "a" {
		t.Fatalf("partial history: %+v", got)
	}
}
