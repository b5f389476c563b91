package e2e

import (
	"fmt"
	"net/http"
	"path/filepath"
	"testing"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/immutd/immutd/internal/config"
	"github.com/immutd/immutd/internal/state"
)

// Benchmarks of the real binary. Each runs a number of trials inside one
// b.N iteration (run with -benchtime 1x) and reports percentiles; each
// also measures its baseline in the same run.

const benchTrials = 10

// BenchmarkFailureToReplacementLaunch: an instance starts failing its
// health check (interval 1s, unhealthy_threshold 3); time until immutd
// journals the replacement launch and calls the provider. Target:
// <= 3 x 1s + 350ms. Baseline: a bare loop probing the same instance every
// second and counting three consecutive failures, started in the same
// trial.
func BenchmarkFailureToReplacementLaunch(b *testing.B) {
	for b.Loop() {
		e := newEnv(b, envOpts{})
		extra := ""
		ff := fmt.Sprintf(`fleet "web" {
  size = 2
  provider = %q
  image = %q
  health {
    http "ready" {
      path = "/healthz"
      interval = "1s"
      timeout = "500ms"
      unhealthy_threshold = 3
      startup_timeout = "20s"
    }
  }
  remediation { max_unhealthy = 1 }
%s}
`, config.ProviderLocal, filepath.Join(imagesDir, "sampleapp-v1"), extra)
		e.writeFleet("web.hcl", ff)
		e.start()
		var immutd, baseline []time.Duration
		for i := 0; i < benchTrials; i++ {
			f := e.waitHealthy("web", 2, "", 60*time.Second)
			// Let the verdicts settle into their steady probe phase.
			time.Sleep(time.Duration(1000+137*i) * time.Millisecond)
			victim := f.Instances[i%2]
			after := e.lastSeq()
			bare := make(chan time.Time, 1)
			stop := make(chan struct{})
			go bareDetector(victim.Address, time.Second, 3, bare, stop)
			time.Sleep(time.Duration(i*97%1000) * time.Millisecond) // random phase against both probers
			t0 := time.Now()
			resp, err := http.Post("http://"+victim.Address+"/fail", "text/plain", nil)
			if err != nil {
				b.Fatal(err)
			}
			resp.Body.Close()
			ev := e.waitEvent(after, 30*time.Second, func(ev state.Event) bool {
				return ev.Action == "launch_planned" && ev.Fleet == "web"
			})
			immutd = append(immutd, ev.Time.Sub(t0))
			select {
			case at := <-bare:
				baseline = append(baseline, at.Sub(t0))
			case <-time.After(10 * time.Second):
				b.Fatal("bare detector did not see the failure")
			}
			close(stop)
			e.waitHealthy("web", 2, "", 60*time.Second, victim.ID)
		}
		report(b, "immutd", immutd)
		report(b, "bare_detector", baseline)
		e.cleanup()
	}
}

// bareDetector probes addr every interval and reports the time of the
// threshold-th consecutive failure.
func bareDetector(addr string, interval time.Duration, threshold int, out chan<- time.Time, stop <-chan struct{}) {
	c := http.Client{Timeout: interval / 2}
	t := time.NewTicker(interval)
	defer t.Stop()
	fails := 0
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		resp, err := c.Get("http://" + addr + "/healthz")
		ok := err == nil && resp.StatusCode == 200
		if err == nil {
			resp.Body.Close()
		}
		if ok {
			fails = 0
			continue
		}
		if fails++; fails == threshold {
			out <- time.Now()
			return
		}
	}
}

// BenchmarkFleetFileToProviderCall: save a fleet file that grows the fleet
// by one; time until the launch is journaled (the provider call starts
// right after) and until the provider's launch call returned. Target:
// <= 200ms to the call. Baseline: the time until a bare fsnotify watcher
// in this process sees the same save.
func BenchmarkFleetFileToProviderCall(b *testing.B) {
	for b.Loop() {
		e := newEnv(b, envOpts{})
		e.writeFleet("web.hcl", fleetFile("web", 1, "v1", ""))
		e.start()
		e.waitHealthy("web", 1, "", 30*time.Second)
		w, err := fsnotify.NewWatcher()
		if err != nil {
			b.Fatal(err)
		}
		if err := w.Add(e.fleetsDir); err != nil {
			b.Fatal(err)
		}
		var toIntent, toLaunched, toNotify []time.Duration
		for i := 0; i < benchTrials; i++ {
			size := 2 + i
			after := e.lastSeq()
			for len(w.Events) > 0 {
				<-w.Events
			}
			t0 := time.Now()
			e.writeFleet("web.hcl", fleetFile("web", size, "v1", ""))
			select {
			case <-w.Events:
				toNotify = append(toNotify, time.Since(t0))
			case <-time.After(5 * time.Second):
				b.Fatal("fsnotify saw nothing")
			}
			planned := e.waitEvent(after, 10*time.Second, func(ev state.Event) bool { return ev.Action == "launch_planned" })
			launched := e.waitEvent(after, 10*time.Second, func(ev state.Event) bool { return ev.Action == "launched" })
			toIntent = append(toIntent, planned.Time.Sub(t0))
			toLaunched = append(toLaunched, launched.Time.Sub(t0))
			e.waitHealthy("web", size, "", 30*time.Second)
		}
		w.Close()
		report(b, "to_launch_call", toIntent)
		report(b, "to_launch_returned", toLaunched)
		report(b, "fsnotify_baseline", toNotify)
		e.cleanup()
	}
}
