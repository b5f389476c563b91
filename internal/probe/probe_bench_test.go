package probe

import (
	"context"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/immutd/immutd/internal/state"
)

// Both benchmarks run against the same kind of loopback fleet:
// benchTargets HTTP servers answering 200 on /healthz, with
// DefaultWorkers requests in flight at most. One op is one probe (one GET),
// so ns/op and probes/s compare directly.
const benchTargets = 64

// benchServers starts the fleet. The returned counter counts the
// requests it served, to check that every counted probe was a real GET.
func benchServers(b *testing.B) ([]string, *atomic.Int64) {
	b.Helper()
	var served atomic.Int64
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		served.Add(1)
		if r.URL.Path != "/healthz" {
			http.NotFound(w, r)
			return
		}
		io.WriteString(w, "ok\n")
	})
	addrs := make([]string, benchTargets)
	for i := range addrs {
		srv := httptest.NewServer(handler)
		b.Cleanup(srv.Close)
		addrs[i] = srv.Listener.Addr().String()
	}
	return addrs, &served
}

// BenchmarkBareHTTPLoop is the baseline: DefaultWorkers goroutines, each
// doing keep-alive GETs of one target in a loop with a plain net/http
// client, as fast as they can.
func BenchmarkBareHTTPLoop(b *testing.B) {
	addrs, served := benchServers(b)
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = DefaultWorkers
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr}
	get := func(url string) error {
		resp, err := client.Get(url)
		if err != nil {
			return err
		}
		_, err = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if err == nil && resp.StatusCode != http.StatusOK {
			err = fmt.Errorf("status %d", resp.StatusCode)
		}
		return err
	}
	urls := make([]string, DefaultWorkers)
	for i := range urls {
		urls[i] = "http://" + addrs[i%len(addrs)] + "/healthz"
		if err := get(urls[i]); err != nil { // open the connections
			b.Fatal(err)
		}
	}

	var ops atomic.Int64
	var wg sync.WaitGroup
	servedBefore := served.Load()
	b.ResetTimer()
	start := time.Now()
	for _, url := range urls {
		wg.Go(func() {
			for ops.Add(1) <= int64(b.N) {
				if err := get(url); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	if got := served.Load() - servedBefore; got < int64(b.N) {
		b.Fatalf("%d requests served for %d ops", got, b.N)
	}
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "probes/s")
}

// probeCounter counts recorded results and wakes a waiter at a goal.
type probeCounter struct {
	n    atomic.Int64
	goal atomic.Int64
	hit  chan struct{}
}

func newProbeCounter() *probeCounter {
	c := &probeCounter{hit: make(chan struct{}, 1)}
	c.goal.Store(math.MaxInt64)
	return c
}

func (c *probeCounter) inc() {
	if c.n.Add(1) == c.goal.Load() {
		select {
		case c.hit <- struct{}{}:
		default:
		}
	}
}

// waitFor waits until n results have been recorded in all.
func (c *probeCounter) waitFor(b *testing.B, n int64) {
	select {
	case <-c.hit:
	default:
	}
	c.goal.Store(n)
	if c.n.Load() >= n {
		return
	}
	select {
	case <-c.hit:
	case <-time.After(5 * time.Minute):
		b.Fatalf("%d of %d probes within 5m", c.n.Load(), n)
	}
}

// BenchmarkProberHTTP runs the Prober's real path (scheduling loop,
// workers, HTTP check, state machine, history, histogram) over the same
// fleet with an interval so short that every probe is due again as soon
// as it completes, so the Prober probes as fast as it can.
func BenchmarkProberHTTP(b *testing.B) {
	addrs, served := benchServers(b)
	p := New(Options{Registerer: prometheus.NewRegistry(), Workers: DefaultWorkers})
	counter := newProbeCounter()
	p.afterResult = counter.inc
	targets := make([]Target, len(addrs))
	for i, addr := range addrs {
		targets[i] = Target{
			InstanceID: fmt.Sprintf("bench-%d", i), Fleet: "bench", Address: addr,
			Checks: []state.Check{{
				Name: "ready", Kind: KindHTTP, Path: "/healthz", ExpectStatus: []int{200},
				Interval: time.Microsecond, Timeout: 5 * time.Second,
				HealthyThreshold: 1, UnhealthyThreshold: 3, StartupTimeout: time.Minute,
			}},
		}
	}
	p.Set(targets)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			b.Error(err)
		}
	}()

	// Warm up: connections open, every target healthy. A count of
	// results alone does not say every target was probed: one target's
	// first probe can still be opening its connection while the others
	// go round several times.
	counter.waitFor(b, 4*benchTargets)
	for deadline := time.Now().Add(time.Minute); ; {
		var starting []string
		for id, v := range p.Verdicts() {
			switch v.State {
			case Healthy:
			case Starting:
				starting = append(starting, id)
			default:
				b.Fatalf("%s is %s during warm-up: %q", id, v.State, v.Evidence)
			}
		}
		if len(starting) == 0 {
			break
		}
		if time.Now().After(deadline) {
			b.Fatalf("still starting after a minute of warm-up: %v", starting)
		}
		counter.waitFor(b, counter.n.Load()+benchTargets)
	}

	b.ResetTimer()
	start := time.Now()
	counter.waitFor(b, counter.n.Load()+int64(b.N))
	elapsed := time.Since(start)
	b.StopTimer()
	// Every recorded probe was a request the fleet served before it.
	recorded := counter.n.Load()
	if got := served.Load(); got < recorded {
		b.Fatalf("%d requests served for %d recorded probes", got, recorded)
	}
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "probes/s")
}
