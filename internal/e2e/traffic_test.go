package e2e

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/immutd/immutd/internal/api"
	"github.com/immutd/immutd/internal/state"
	"github.com/immutd/immutd/internal/traffic/haproxy/haproxytest"
)

// ---- A bounded load generator ----

// load sends requests through a load balancer from a few workers until it
// is stopped, or at most maxLoad requests or loadCap of time: it always
// ends by itself. One worker holds every request open for slowMS, so a
// drain that ends before its connections do would cut it.
type load struct {
	url     string
	stopped chan struct{}
	wg      sync.WaitGroup

	ok, failed, slowOK atomic.Int64
	mu                 sync.Mutex
	errs               []string
	// firstFail and lastFail bound the failures in time.
	firstFail, lastFail time.Time
}

const (
	maxLoad = 200000
	loadCap = 10 * time.Minute
	slowMS  = 1500
)

func startLoad(t testing.TB, addr string, workers int) *load {
	t.Helper()
	l := &load{url: "http://" + addr, stopped: make(chan struct{})}
	var sent atomic.Int64
	deadline := time.Now().Add(loadCap)
	for w := 0; w < workers; w++ {
		slow := w == 0
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			client := &http.Client{Timeout: 30 * time.Second}
			for sent.Add(1) <= maxLoad && time.Now().Before(deadline) {
				select {
				case <-l.stopped:
					return
				default:
				}
				path := "/"
				if slow {
					path = fmt.Sprintf("/slow?ms=%d", slowMS)
				}
				l.one(client, path, slow)
			}
		}()
	}
	t.Cleanup(func() { l.stop() })
	return l
}

func (l *load) one(client *http.Client, path string, slow bool) {
	resp, err := client.Get(l.url + path)
	if err == nil {
		_, err = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if err == nil && resp.StatusCode != http.StatusOK {
			err = fmt.Errorf("status %d", resp.StatusCode)
		}
	}
	if err != nil {
		l.failed.Add(1)
		l.mu.Lock()
		if l.firstFail.IsZero() {
			l.firstFail = time.Now()
		}
		l.lastFail = time.Now()
		if len(l.errs) < 20 {
			l.errs = append(l.errs, time.Now().Format("15:04:05.000")+" "+path+": "+err.Error())
		}
		l.mu.Unlock()
		return
	}
	l.ok.Add(1)
	if slow {
		l.slowOK.Add(1)
	}
}

// stop ends the load and returns what it counted.
func (l *load) stop() (ok, failed, slowOK int64, errs []string) {
	select {
	case <-l.stopped:
	default:
		close(l.stopped)
	}
	l.wg.Wait()
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.ok.Load(), l.failed.Load(), l.slowOK.Load(), append([]string(nil), l.errs...)
}

// ---- Fleets behind HAProxy ----

// trafficBlock is a traffic block switching HAProxy backend "web".
func trafficBlock(socket string) string {
	return fmt.Sprintf(`  traffic {
    min_ready   = "1s"
    drain_delay = "8s"
    keep_min    = 1
    haproxy "edge" {
      socket  = %q
      backend = "web"
    }
  }
`, socket)
}

// servers lists the immutd servers of HAProxy backend "web" that are
// ready, by name.
func servers(t testing.TB, h *haproxytest.Instance) map[string]string {
	t.Helper()
	out, err := h.Command("show servers state web")
	if err != nil {
		t.Fatalf("show servers state: %v", err)
	}
	got := map[string]string{}
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		// be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state ...
		if len(f) > 6 && f[1] == "web" && strings.HasPrefix(f[3], "immutd-") {
			got[f[3]] = "op=" + f[5] + " admin=" + f[6]
			// Ready: running (2), neither in maintenance (0x23) nor
			// draining (0x18). HAProxy 2.6 keeps 0x04 of a server added
			// disabled after it is set ready.
			if admin, err := strconv.Atoi(f[6]); err == nil && f[5] == "2" && admin&0x3b == 0 {
				got[f[3]] += " ready"
			}
		}
	}
	return got
}

// admittedFleet waits until the fleet has n healthy instances, all up to
// date with digest and admitted, and HAProxy has exactly them ready.
func admittedFleet(t testing.TB, read func() (api.Status, error), h *haproxytest.Instance, name string, n int, digestPrefix string) api.Fleet {
	t.Helper()
	var f api.Fleet
	deadline := time.Now().Add(2 * time.Minute)
	for {
		st, err := read()
		last := ""
		if err == nil {
			var ok bool
			f, ok = fleetOf(st, name)
			admitted := 0
			for _, in := range f.Instances {
				if in.Traffic == "admitted" && in.State == "healthy" && strings.HasPrefix(strings.TrimPrefix(in.ImageDigest, "sha256:"), digestPrefix) {
					admitted++
				}
			}
			srv := servers(t, h)
			ready := 0
			for _, s := range srv {
				if strings.HasSuffix(s, " ready") {
					ready++
				}
			}
			if ok && admitted == n && len(f.Instances) == n && ready == n && len(srv) == n {
				return f
			}
			last = fmt.Sprintf("%s; haproxy %v", describe(f), srv)
		} else {
			last = err.Error()
		}
		if time.Now().After(deadline) {
			t.Fatalf("fleet %s never had %d admitted instances of %s behind HAProxy: %s", name, n, digestPrefix, last)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func digestOf(f api.Fleet) string {
	if len(f.Instances) == 0 {
		return ""
	}
	return strings.TrimPrefix(f.Instances[0].ImageDigest, "sha256:")
}

// behindHAProxy starts an HAProxy and an agent whose 3-instance fleet
// "web" (v1) is switched through it, and waits until all are admitted.
func behindHAProxy(t *testing.T) (*haproxytest.Instance, *env, api.Fleet) {
	t.Helper()
	h := haproxytest.Start(t, haproxytest.Options{})
	e := newEnv(t, envOpts{})
	e.start()
	e.writeFleet("web.hcl", fleetFile("web", 3, "v1", trafficBlock(h.Socket)))
	return h, e, admittedFleet(t, e.trystatus, h, "web", 3, "")
}

// checkNoFailures reports the load's counts and fails on any failed
// request.
func checkNoFailures(t *testing.T, what string, l *load) {
	t.Helper()
	// A fast rollout may end before much load went through: let the load
	// run on (it must keep succeeding) until it proves something.
	for deadline := time.Now().Add(time.Minute); (l.ok.Load() < 50 || l.slowOK.Load() < 2) && time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
	}
	ok, failed, slowOK, errs := l.stop()
	t.Logf("%s: %d requests through HAProxy succeeded (%d held open for %dms each), %d failed", what, ok, slowOK, slowMS, failed)
	if failed > 0 {
		t.Fatalf("%s: %d failed requests; first: %s", what, failed, strings.Join(errs, "\n"))
	}
	if ok < 50 || slowOK < 2 {
		t.Fatalf("%s: only %d requests (%d slow) went through: the test proves nothing", what, ok, slowOK)
	}
}

// TestTrafficRolloutDropsNoRequest rolls a 3-instance fleet behind a real
// HAProxy from v1 to v2 while requests flow: every request succeeds.
func TestTrafficRolloutDropsNoRequest(t *testing.T) {
	h, e, v1 := behindHAProxy(t)
	l := startLoad(t, h.Addr, 4)
	after := e.lastSeq()
	e.writeFleet("web.hcl", fleetFile("web", 3, "v2", trafficBlock(h.Socket)))
	e.waitFor("a new image committed", time.Minute, func() (bool, string) {
		d := digestOf(e.fleet("web"))
		f := e.fleet("web")
		return f.ImageDigest != "" && !strings.HasSuffix(f.ImageDigest, digestOf(v1)), d
	})
	v2 := e.fleet("web").ImageDigest
	admittedFleet(t, e.trystatus, h, "web", 3, shortDigest(v2))
	checkNoFailures(t, "rollout v1 to v2", l)
	checkDrainOrder(t, e.eventsAfter(after), v1, 3)
	m := get(t, "http://"+e.httpAddr+"/metrics")
	for _, want := range []string{`immutd_traffic_step_duration_seconds_count{kind="drain",outcome="done"} 3`,
		`immutd_traffic_instances{fleet="web",state="admitted"} 3`} {
		if !strings.Contains(m, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}

// checkDrainOrder checks the event log of replacements: every terminated
// instance that was admitted (before the log starts: those of before) was
// drained first, its traffic removed once, and every drain came after an
// admission of a new instance (surge-first). An instance never admitted
// (an extra launch a failover left) may go without a drain.
func checkDrainOrder(t *testing.T, evs []state.Event, before api.Fleet, want int) {
	t.Helper()
	removed, drained := map[string]int{}, map[string]bool{}
	wasAdmitted := map[string]bool{}
	for _, in := range before.Instances {
		wasAdmitted[in.ID] = in.Traffic == "admitted"
	}
	admitted, terminated := 0, 0
	for _, ev := range evs {
		switch ev.Action {
		case state.ActionAdmitted:
			admitted++
			wasAdmitted[ev.InstanceID] = true
		case state.ActionTrafficRemoved:
			removed[ev.InstanceID]++
			if admitted == 0 {
				t.Errorf("%s drained before any new instance was admitted", ev.InstanceID)
			}
		case state.ActionDrained:
			drained[ev.InstanceID] = true
		case state.ActionTerminated:
			terminated++
			if !wasAdmitted[ev.InstanceID] {
				t.Logf("%s terminated (%s) without having been admitted", ev.InstanceID, ev.Reason)
			}
			if wasAdmitted[ev.InstanceID] && !drained[ev.InstanceID] {
				t.Errorf("%s terminated without a finished drain", ev.InstanceID)
			}
		}
	}
	for id, n := range removed {
		if n != 1 {
			t.Errorf("traffic of %s removed %d times", id, n)
		}
	}
	if terminated < want {
		t.Errorf("%d instances terminated, want %d", terminated, want)
	}
}

// TestTrafficDriftReplacementDropsNoRequest changes a file of an instance
// behind HAProxy while requests flow: it is replaced, surge-first and
// drained, and every request succeeds.
func TestTrafficDriftReplacementDropsNoRequest(t *testing.T) {
	h, e, f := behindHAProxy(t)
	l := startLoad(t, h.Addr, 4)
	after := e.lastSeq()
	victim := f.Instances[1]
	fh, err := os.OpenFile(filepath.Join(victim.Location, "config", "app.conf"), os.O_APPEND|os.O_WRONLY, 0)
	must(t, err)
	fmt.Fprintln(fh, `greeting = "patched by hand"`)
	must(t, fh.Close())
	e.waitTerminated("web", victim.ID)
	admittedFleet(t, e.trystatus, h, "web", 3, "")
	checkNoFailures(t, "drift replacement", l)
	checkDrainOrder(t, e.eventsAfter(after), f, 1)
}

// TestTrafficFailingInstanceIsDrained makes an instance behind HAProxy
// fail its health check while requests flow. Requests to it fail until
// immutd drains it (the detection window); the figure is reported, not
// required to be zero.
func TestTrafficFailingInstanceIsDrained(t *testing.T) {
	h, e, f := behindHAProxy(t)
	l := startLoad(t, h.Addr, 4)
	victim := f.Instances[0]
	resp, err := http.Post("http://"+victim.Address+"/fail", "text/plain", nil)
	must(t, err)
	resp.Body.Close()
	e.waitTerminated("web", victim.ID)
	admittedFleet(t, e.trystatus, h, "web", 3, "")
	ok, failed, _, errs := l.stop()
	window := l.lastFail.Sub(l.firstFail)
	t.Logf("failing instance: %d requests succeeded, %d failed in %v while immutd detected and drained it (health check every 300ms, unhealthy after 2; sample: %s)",
		ok, failed, window.Round(time.Millisecond), strings.Join(errs[:min(3, len(errs))], "; "))
	if failed == 0 {
		t.Fatalf("no request failed: the instance never failed its requests, so this test proves nothing")
	}
}

// TestTrafficLeaderKilledMidDrain kills the leader of a 3-agent cluster
// with SIGKILL while an instance is draining during a rollout behind
// HAProxy: the next leader finishes the drain once, and every request
// succeeds.
func TestTrafficLeaderKilledMidDrain(t *testing.T) {
	h := haproxytest.Start(t, haproxytest.Options{})
	c := newCluster(t, 3, "")
	c.start()
	c.writeFleet("web.hcl", fleetFile("web", 3, "v1", trafficBlock(h.Socket)))
	lead := c.leader()
	read := func() (api.Status, error) { return c.agents[lead].consistentStatus() }
	v1 := admittedFleet(t, read, h, "web", 3, "")
	l := startLoad(t, h.Addr, 4)
	after := c.agents[lead].lastSeq()
	c.writeFleet("web.hcl", fleetFile("web", 3, "v2", trafficBlock(h.Socket)))
	// Wait until a drain is in its wait: traffic removed, connections
	// (the slow requests) still open.
	ev := c.agents[lead].waitEvent(after, 2*time.Minute, func(ev state.Event) bool { return ev.Action == state.ActionTrafficRemoved })
	t.Logf("killing leader agent-%d while %s drains", lead+1, ev.InstanceID)
	c.agents[lead].kill9()
	next := c.leader(lead)
	read = func() (api.Status, error) { return c.agents[next].consistentStatus() }
	deadline := time.Now().Add(3 * time.Minute)
	for {
		f, err := read()
		if err == nil {
			if fl, ok := fleetOf(f, "web"); ok && fl.ImageDigest != "" && !strings.HasSuffix(fl.ImageDigest, digestOf(v1)) {
				admittedFleet(t, read, h, "web", 3, shortDigest(fl.ImageDigest))
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("rollout did not finish after the leader was killed")
		}
		time.Sleep(200 * time.Millisecond)
	}
	checkNoFailures(t, "leader killed mid-drain", l)
	evs := c.agents[next].eventsAfter(after)
	checkDrainOrder(t, evs, v1, 3)
	if e := findEvent(evs, state.ActionTerminated, ev.InstanceID); e == nil {
		t.Fatalf("%s, draining when the leader died, was never terminated", ev.InstanceID)
	}
}

// TestTrafficHAProxyReloadIsRepaired reloads HAProxy, which drops the
// servers immutd added at run time: the next passes add the admitted
// instances again.
func TestTrafficHAProxyReloadIsRepaired(t *testing.T) {
	h, e, f := behindHAProxy(t)
	pid := h.PID()
	h.Reload(t) // a new process from the configuration file, without them
	if h.PID() == pid {
		t.Fatal("HAProxy was not reloaded: the test proves nothing")
	}
	again := admittedFleet(t, e.trystatus, h, "web", 3, "")
	if fmt.Sprint(ids(again)) != fmt.Sprint(ids(f)) {
		t.Fatalf("instances changed: %s, before %s", describe(again), describe(f))
	}
}

// TestBlueGreenSwitchDropsNoRequest rolls a 3-instance fleet behind a
// real HAProxy from v1 to v2 with strategy = "blue_green" while requests
// flow: the whole v2 set is launched and made ready without traffic,
// admitted in one step, then the whole v1 set is drained in one step and
// kept running for the bake, then terminated. No request fails, no v1
// instance is drained before every v2 one is admitted, and none is
// terminated before the version is stable.
func TestBlueGreenSwitchDropsNoRequest(t *testing.T) {
	h, e, v1 := behindHAProxy(t)
	l := startLoad(t, h.Addr, 4)
	mark := e.lastSeq()
	bg := "  rollout {\n    strategy = \"blue_green\"\n    bake     = \"3s\"\n  }\n"
	e.writeFleet("web.hcl", fleetFile("web", 3, "v2", trafficBlock(h.Socket)+bg))
	e.waitEvent(mark, 2*time.Minute, func(ev state.Event) bool { return ev.Action == state.ActionRolloutSwitched })
	stable := e.waitEvent(mark, 2*time.Minute, func(ev state.Event) bool {
		return ev.Action == state.ActionRolloutStable && ev.Fleet == "web"
	})
	v2 := e.fleet("web").ImageDigest
	admittedFleet(t, e.trystatus, h, "web", 3, shortDigest(v2))
	for id := range ids(v1) {
		e.waitTerminated("web", id)
	}
	checkNoFailures(t, "blue-green switch v1 to v2", l)
	old := ids(v1)
	var lastAdmit, firstDrain time.Time
	admits := 0
	for _, ev := range e.eventsAfter(mark) {
		switch {
		case ev.Action == state.ActionAdmitted && !old[ev.InstanceID]:
			admits++
			lastAdmit = ev.Time
		case ev.Action == state.ActionDrainPlanned && old[ev.InstanceID]:
			if ev.Reason != "switch" {
				t.Errorf("old instance %s drained for %s, not the switch", ev.InstanceID, ev.Reason)
			}
			if firstDrain.IsZero() {
				firstDrain = ev.Time
			}
		case ev.Action == state.ActionTerminatePlanned && old[ev.InstanceID] && ev.Seq < stable.Seq:
			t.Errorf("old instance %s terminated before the version was stable: %+v", ev.InstanceID, ev)
		}
	}
	if admits != 3 || firstDrain.IsZero() || firstDrain.Before(lastAdmit) {
		t.Fatalf("%d new instances admitted, the last at %s; the first old one drained at %s", admits, lastAdmit, firstDrain)
	}
}
