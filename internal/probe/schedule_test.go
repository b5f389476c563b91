package probe

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/immutd/immutd/internal/state"
)

// fakeNet stands in for the network in scheduler tests: it answers a
// probe of an address, or of one check of it ("addr/check"), as told, and
// records when each address was probed.
type fakeNet struct {
	mu      sync.Mutex
	failing map[string]bool
	delay   map[string]time.Duration
	calls   map[string][]time.Time
}

func newFakeNet() *fakeNet {
	return &fakeNet{failing: map[string]bool{}, delay: map[string]time.Duration{}, calls: map[string][]time.Time{}}
}

func (f *fakeNet) run(ctx context.Context, j *job) (bool, string) {
	f.mu.Lock()
	f.calls[j.address] = append(f.calls[j.address], time.Now())
	fail := f.failing[j.address] || f.failing[j.address+"/"+j.check.Name]
	d := f.delay[j.address]
	f.mu.Unlock()
	if d > 0 {
		select {
		case <-time.After(d):
		case <-ctx.Done():
			return false, j.describe(ctx, ctx.Err())
		}
	}
	if fail {
		return false, "status 500"
	}
	return true, "status 200"
}

func (f *fakeNet) setFailing(key string, v bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failing[key] = v
}

func (f *fakeNet) setDelay(addr string, d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.delay[addr] = d
}

func (f *fakeNet) callTimes(addr string) []time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]time.Time(nil), f.calls[addr]...)
}

type change struct {
	id string
	v  Verdict
	at time.Time
}

// fakeProber starts a Prober on fake inside a synctest bubble. Changes
// go to the returned channel. stop ends Run and checks its error.
func fakeProber(t *testing.T, fake *fakeNet, opts Options) (p *Prober, changes chan change, stop func()) {
	t.Helper()
	changes = make(chan change, 256)
	opts.OnChange = func(id string, v Verdict) {
		select {
		case changes <- change{id: id, v: v, at: time.Now()}:
		default:
			t.Errorf("change of %s to %s dropped: test channel full", id, v.State)
		}
	}
	p = New(opts)
	p.runCheck = fake.run
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	return p, changes, func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
	}
}

// next waits (in fake time, bounded) for the next change.
func next(t *testing.T, changes <-chan change, within time.Duration) change {
	t.Helper()
	select {
	case c := <-changes:
		return c
	case <-time.After(within):
		t.Fatalf("no verdict change within %v", within)
		return change{}
	}
}

func httpCheck(name string, interval time.Duration, healthy, unhealthy int, startup time.Duration) state.Check {
	return state.Check{
		Name: name, Kind: KindHTTP, Path: "/healthz", ExpectStatus: []int{200},
		Interval: interval, Timeout: interval / 2,
		HealthyThreshold: healthy, UnhealthyThreshold: unhealthy, StartupTimeout: startup,
	}
}

func TestScheduleStartingCadenceThenInterval(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fake := newFakeNet()
		p, changes, stop := fakeProber(t, fake, Options{})
		defer stop()
		start := time.Now()
		p.Set([]Target{{InstanceID: "a", Address: "a:1", Checks: []state.Check{httpCheck("ready", 2*time.Second, 3, 3, time.Minute)}}})

		c := next(t, changes, 10*time.Second)
		if c.id != "a" || c.v.State != Healthy {
			t.Fatalf("change %s %s, want a healthy", c.id, c.v.State)
		}
		// Probes at 0, 10ms and 20ms: healthy after the third.
		if got := c.at.Sub(start); got != 20*time.Millisecond {
			t.Fatalf("healthy after %v, want 20ms", got)
		}
		if !c.v.Since.Equal(c.at) || len(c.v.Evidence) != 0 {
			t.Fatalf("verdict %+v", c.v)
		}

		time.Sleep(20 * time.Second)
		synctest.Wait()
		calls := fake.callTimes("a:1")
		if len(calls) < 10 {
			t.Fatalf("%d probes in 20s", len(calls))
		}
		for i := 1; i < 3; i++ {
			if gap := calls[i].Sub(calls[i-1]); gap != startingFirstGap {
				t.Fatalf("starting gap %d = %v, want %v", i, gap, startingFirstGap)
			}
		}
		if gap := calls[3].Sub(calls[2]); gap <= 0 || gap > 2*time.Second {
			t.Fatalf("first steady gap %v, want in (0, 2s]", gap)
		}
		for i := 4; i < len(calls); i++ {
			if gap := calls[i].Sub(calls[i-1]); gap != 2*time.Second {
				t.Fatalf("steady gap %d = %v, want 2s", i, gap)
			}
		}
	})
}

// An instance that answers only after a while is probed densely at
// first, then every startingInterval: judged healthy within one
// startingInterval of its first answer, at a cost of about ten probes a
// second while it starts.
func TestScheduleSlowStarterBacksOff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fake := newFakeNet()
		fake.setFailing("a:1", true)
		p, changes, stop := fakeProber(t, fake, Options{})
		defer stop()
		start := time.Now()
		p.Set([]Target{{InstanceID: "a", Address: "a:1", Checks: []state.Check{httpCheck("ready", 5*time.Second, 1, 3, time.Minute)}}})

		const answersAfter = 2 * time.Second
		time.Sleep(answersAfter)
		fake.setFailing("a:1", false)
		c := next(t, changes, 10*time.Second)
		if c.id != "a" || c.v.State != Healthy {
			t.Fatalf("change %s %s, want a healthy", c.id, c.v.State)
		}
		if late := c.at.Sub(start) - answersAfter; late < 0 || late > startingInterval {
			t.Fatalf("judged healthy %v after it answered, want within %v", late, startingInterval)
		}
		calls := fake.callTimes("a:1")
		var before []time.Time
		for _, at := range calls {
			if at.Sub(start) < answersAfter {
				before = append(before, at)
			}
		}
		// Gaps 10, 10, 10, 15, 22.5, ... up to 100ms: 10 probes in the
		// first 330ms, then 10 a second.
		if n := len(before); n < 25 || n > 27 {
			t.Fatalf("%d probes while it was not answering for %v, want 25..27 (26 on the gaps above)", n, answersAfter)
		}
		for i := 1; i < len(before); i++ {
			gap, prev := before[i].Sub(before[i-1]), time.Duration(0)
			if i > 1 {
				prev = before[i-1].Sub(before[i-2])
			}
			if gap < startingFirstGap || gap > startingInterval || gap < prev {
				t.Fatalf("starting gap %d = %v after %v: want growing, within [%v, %v]", i, gap, prev, startingFirstGap, startingInterval)
			}
		}
		if last := before[len(before)-1].Sub(before[len(before)-2]); last != startingInterval {
			t.Fatalf("gap once settled %v, want %v", last, startingInterval)
		}
	})
}

// An instance that starts failing is unhealthy within
// unhealthy_threshold x interval plus the duration of the last probe,
// wherever in the interval the failure starts, and probe durations do not
// stretch the period.
func TestScheduleUnhealthyDeadline(t *testing.T) {
	const (
		interval = time.Second
		probeDur = 20 * time.Millisecond
	)
	for _, offset := range []time.Duration{0, time.Millisecond, 137 * time.Millisecond, 500 * time.Millisecond, 999 * time.Millisecond} {
		t.Run(fmt.Sprint(offset), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				fake := newFakeNet()
				fake.setDelay("a:1", probeDur)
				p, changes, stop := fakeProber(t, fake, Options{})
				defer stop()
				p.Set([]Target{{InstanceID: "a", Address: "a:1", Checks: []state.Check{httpCheck("ready", interval, 1, 3, time.Minute)}}})
				if c := next(t, changes, 5*time.Second); c.v.State != Healthy {
					t.Fatalf("got %s, want healthy", c.v.State)
				}
				time.Sleep(30*time.Second + offset)
				synctest.Wait()
				fake.setFailing("a:1", true)
				failAt := time.Now()

				c := next(t, changes, 10*time.Second)
				if c.v.State != Unhealthy {
					t.Fatalf("got %s, want unhealthy", c.v.State)
				}
				took := c.at.Sub(failAt)
				if took > 3*interval+probeDur || took <= 2*interval {
					t.Fatalf("unhealthy %v after failures began, want in (2s, 3s+%v]", took, probeDur)
				}
				if st := c.v.Checks["ready"]; st.ConsecutiveFailures != 3 {
					t.Fatalf("check status %+v", st)
				}
			})
		})
	}
}

func TestScheduleStartupWindowExpiresOnTime(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fake := newFakeNet()
		fake.setFailing("a:1", true)
		fake.setFailing("b:1", true)
		// Results land 100ms after each probe starts, so only the
		// scheduler's own deadline can be right on time.
		fake.setDelay("a:1", 100*time.Millisecond)
		fake.setDelay("b:1", 100*time.Millisecond)
		p, changes, stop := fakeProber(t, fake, Options{})
		defer stop()
		start := time.Now()
		check := httpCheck("ready", 2*time.Second, 1, 3, 5*time.Second)
		p.Set([]Target{
			{InstanceID: "a", Address: "a:1", Checks: []state.Check{check}},
			{InstanceID: "b", Address: "b:1", Checks: []state.Check{check}, Since: start.Add(-3 * time.Second)},
		})
		want := map[string]time.Duration{"b": 2 * time.Second, "a": 5 * time.Second}
		for range 2 {
			c := next(t, changes, 10*time.Second)
			if c.v.State != NeverHealthy {
				t.Fatalf("%s: got %s, want never_healthy", c.id, c.v.State)
			}
			if got := c.at.Sub(start); got != want[c.id] {
				t.Fatalf("%s never_healthy after %v, want %v", c.id, got, want[c.id])
			}
			wantEv := fmt.Sprintf(`http "ready": GET http://%s:1/healthz: status 500 (`, c.id)
			if len(c.v.Evidence) != 1 || !strings.HasPrefix(c.v.Evidence[0], wantEv) || !strings.HasSuffix(c.v.Evidence[0], " consecutive failures)") {
				t.Fatalf("%s evidence %q, want %q...", c.id, c.v.Evidence, wantEv)
			}
			delete(want, c.id)
		}
	})
}

func TestScheduleSpreadsSteadyProbes(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fake := newFakeNet()
		p, _, stop := fakeProber(t, fake, Options{})
		defer stop()
		var targets []Target
		for i := range 50 {
			targets = append(targets, Target{
				InstanceID: fmt.Sprintf("web-%d", i), Address: fmt.Sprintf("web-%d:80", i),
				Checks: []state.Check{httpCheck("ready", time.Second, 1, 3, time.Minute)},
			})
		}
		start := time.Now()
		p.Set(targets)
		time.Sleep(5 * time.Second)
		synctest.Wait()
		instants := map[time.Time]bool{}
		for _, tg := range targets {
			calls := fake.callTimes(tg.Address)
			n := 0
			for _, at := range calls {
				if d := at.Sub(start); d >= 3*time.Second && d < 4*time.Second {
					instants[at] = true
					n++
				}
			}
			if n != 1 {
				t.Fatalf("%s probed %d times in one steady interval, want 1", tg.InstanceID, n)
			}
		}
		if len(instants) < 45 {
			t.Fatalf("50 steady probes fired at only %d distinct instants", len(instants))
		}
	})
}

func TestScheduleRemoveStopsProbing(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fake := newFakeNet()
		// a's probes hang until their timeout, so one is always in flight.
		fake.setDelay("a:1", time.Hour)
		p, _, stop := fakeProber(t, fake, Options{})
		defer stop()
		check := httpCheck("ready", 2*time.Second, 1, 3, time.Minute)
		a := Target{InstanceID: "a", Address: "a:1", Checks: []state.Check{check}}
		b := Target{InstanceID: "b", Address: "b:1", Checks: []state.Check{check}}
		p.Set([]Target{a, b})
		time.Sleep(3500 * time.Millisecond)
		synctest.Wait()
		if h := p.History("a"); len(h) == 0 || h[0].Detail != "timeout after 1s" {
			t.Fatalf("history of a: %+v", h)
		}

		// Remove a with a probe in flight, and add it again at once: the
		// cancelled probe's result must not reach the new a.
		p.Set([]Target{b})
		if _, ok := p.Verdict("a"); ok {
			t.Fatal("a still has a verdict after removal")
		}
		if p.History("a") != nil {
			t.Fatal("a still has a history after removal")
		}
		p.Set([]Target{a, b})
		time.Sleep(5 * time.Second)
		synctest.Wait()
		for _, r := range p.History("a") {
			if r.Detail != "timeout after 1s" {
				t.Fatalf("result of the removed a reached the new one: %+v", r)
			}
		}

		p.Set([]Target{b})
		synctest.Wait()
		n := len(fake.callTimes("a:1"))
		nb := len(fake.callTimes("b:1"))
		time.Sleep(20 * time.Second)
		synctest.Wait()
		if got := len(fake.callTimes("a:1")); got != n {
			t.Fatalf("a probed %d more times after removal", got-n)
		}
		if got := len(fake.callTimes("b:1")); got < nb+9 {
			t.Fatalf("b probed %d times in 20s, want >= 9", got-nb)
		}
		if v := p.Verdicts(); len(v) != 1 || v["b"].State != Healthy {
			t.Fatalf("verdicts %+v", v)
		}
	})
}

func TestScheduleOnChangeSequence(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fake := newFakeNet()
		p, changes, stop := fakeProber(t, fake, Options{})
		defer stop()
		p.Set([]Target{{InstanceID: "a", Fleet: "web", Address: "a:1", Checks: []state.Check{
			httpCheck("ready", time.Second, 2, 2, time.Minute),
			{Name: "port", Kind: KindTCP, Interval: time.Second, Timeout: 500 * time.Millisecond, HealthyThreshold: 1, UnhealthyThreshold: 3, StartupTimeout: time.Minute},
		}}})
		expect := func(want State) Verdict {
			t.Helper()
			c := next(t, changes, 30*time.Second)
			if c.id != "a" || c.v.State != want {
				t.Fatalf("change %s %s, want a %s", c.id, c.v.State, want)
			}
			if v, _ := p.Verdict("a"); v.State != want {
				t.Fatalf("Verdict says %s right after the change to %s", v.State, want)
			}
			return c.v
		}
		expect(Healthy)

		time.Sleep(10 * time.Second)
		// Both checks start failing; ready (threshold 2) crosses its
		// threshold before port (threshold 3) can, with the newest failure.
		fake.setFailing("a:1/ready", true)
		fake.setFailing("a:1/port", true)
		v := expect(Unhealthy)
		if v.Checks["ready"].State != Unhealthy || v.Checks["port"].State != Healthy {
			t.Fatalf("checks %+v", v.Checks)
		}
		if len(v.Evidence) != 2 ||
			v.Evidence[0] != `http "ready": GET http://a:1/healthz: status 500 (2 consecutive failures)` ||
			!strings.HasPrefix(v.Evidence[1], `tcp "port": dial a:1: status 500 (`) {
			t.Fatalf("evidence %q", v.Evidence)
		}

		fake.setFailing("a:1/ready", false)
		fake.setFailing("a:1/port", false)
		v = expect(Healthy)
		if len(v.Evidence) != 0 {
			t.Fatalf("healthy verdict has evidence %q", v.Evidence)
		}

		// A changed check resets the instance: starting again, history
		// cleared, then healthy.
		changed := httpCheck("ready", time.Second, 2, 2, time.Minute)
		changed.Path = "/ready"
		p.Set([]Target{{InstanceID: "a", Fleet: "web", Address: "a:1", Checks: []state.Check{changed}}})
		if h := p.History("a"); len(h) != 0 {
			t.Fatalf("history after reset: %+v", h)
		}
		expect(Starting)
		v = expect(Healthy)
		if _, ok := v.Checks["port"]; ok || len(v.Checks) != 1 {
			t.Fatalf("checks after reset %+v", v.Checks)
		}

		// Same target again: nothing changes.
		p.Set([]Target{{InstanceID: "a", Fleet: "web", Address: "a:1", Checks: []state.Check{changed}}})
		time.Sleep(10 * time.Second)
		select {
		case c := <-changes:
			t.Fatalf("unexpected change %s %s", c.id, c.v.State)
		default:
		}
	})
}

func TestScheduleRunAgain(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fake := newFakeNet()
		fake.setDelay("a:1", 300*time.Millisecond)
		p := New(Options{})
		p.runCheck = fake.run
		p.Set([]Target{{InstanceID: "a", Address: "a:1", Checks: []state.Check{httpCheck("ready", time.Second, 1, 3, time.Minute)}}})

		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- p.Run(ctx) }()
		time.Sleep(150 * time.Millisecond)
		synctest.Wait()
		if err := p.Run(context.Background()); err == nil {
			t.Fatal("a second concurrent Run did not fail")
		}
		// Stop with the first probe in flight.
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		if h := p.History("a"); len(h) != 0 {
			t.Fatalf("a probe cut short by the end of Run was recorded: %+v", h)
		}

		ctx, cancel = context.WithCancel(context.Background())
		go func() { done <- p.Run(ctx) }()
		time.Sleep(5 * time.Second)
		synctest.Wait()
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		if v, _ := p.Verdict("a"); v.State != Healthy {
			t.Fatalf("after a second Run: %s", v.State)
		}
	})
}

func TestSetSkipsWhatItCannotJudge(t *testing.T) {
	p := New(Options{})
	p.Set([]Target{
		{InstanceID: "a", Address: "a:1", Checks: []state.Check{
			{Name: "x", Kind: "icmp"},
			httpCheck("ready", time.Second, 1, 3, time.Minute),
			httpCheck("ready", time.Second, 1, 3, time.Minute),
		}},
		{InstanceID: "a", Address: "other:1"},
		{InstanceID: ""},
		{InstanceID: "none", Address: "n:1"},
	})
	v, ok := p.Verdict("a")
	if !ok || v.State != Starting || len(v.Checks) != 1 {
		t.Fatalf("a: %v %+v", ok, v)
	}
	if v, _ := p.Verdict("none"); v.State != Healthy {
		t.Fatalf("an instance without checks: %s", v.State)
	}
	if n := len(p.Verdicts()); n != 2 {
		t.Fatalf("%d verdicts", n)
	}
}

func TestInjectedClock(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		clock := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
		fake := newFakeNet()
		p, changes, stop := fakeProber(t, fake, Options{Now: func() time.Time { return clock }})
		defer stop()
		p.Set([]Target{{InstanceID: "a", Address: "a:1", Checks: []state.Check{httpCheck("ready", time.Second, 1, 3, time.Minute)}}})
		if v, _ := p.Verdict("a"); !v.Since.Equal(clock) {
			t.Fatalf("since %v, want the injected %v", v.Since, clock)
		}
		c := next(t, changes, 5*time.Second)
		if c.v.State != Healthy || !c.v.Since.Equal(clock) || !c.v.Checks["ready"].Last.At.Equal(clock) {
			t.Fatalf("verdict %+v does not use the injected clock", c.v)
		}
	})
}
