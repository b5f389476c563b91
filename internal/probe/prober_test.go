package probe

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/zap/zaptest"

	"github.com/immutd/immutd/internal/state"
)

// bound is how long an integration test waits for something that takes
// a few milliseconds on loopback.
const bound = 10 * time.Second

// app is a loopback HTTP server whose /healthz answers with a status the
// test sets, and that counts its requests.
type app struct {
	srv    *httptest.Server
	status atomic.Int32
	hits   atomic.Int64
	hit    chan struct{} // a token per request, dropped when full
}

func newApp(t *testing.T) *app {
	t.Helper()
	a := &app{hit: make(chan struct{}, 1024)}
	a.status.Store(http.StatusOK)
	a.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a.hits.Add(1)
		select {
		case a.hit <- struct{}{}:
		default:
		}
		if r.URL.Path != "/healthz" {
			http.NotFound(w, r)
			return
		}
		w.WriteHeader(int(a.status.Load()))
		fmt.Fprintln(w, "ok")
	}))
	t.Cleanup(a.srv.Close)
	return a
}

func (a *app) addr() string { return a.srv.Listener.Addr().String() }

// waitHits waits until the app has served n more requests.
func (a *app) waitHits(t *testing.T, n int) {
	t.Helper()
	deadline := time.After(bound)
	for range n {
		select {
		case <-a.hit:
		case <-deadline:
			t.Fatalf("%s: fewer than %d requests within %v", a.addr(), n, bound)
		}
	}
}

// watcher collects verdict changes per instance, in order.
type watcher struct {
	mu     sync.Mutex
	queued map[string][]Verdict
	signal chan struct{}
}

func newWatcher() *watcher {
	return &watcher{queued: map[string][]Verdict{}, signal: make(chan struct{}, 1)}
}

func (w *watcher) onChange(id string, v Verdict) {
	w.mu.Lock()
	w.queued[id] = append(w.queued[id], v)
	w.mu.Unlock()
	select {
	case w.signal <- struct{}{}:
	default:
	}
}

func (w *watcher) pop(id string) (Verdict, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	q := w.queued[id]
	if len(q) == 0 {
		return Verdict{}, false
	}
	w.queued[id] = q[1:]
	return q[0], true
}

// await waits for the next change of id, which must be to want.
func (w *watcher) await(t *testing.T, id string, want State) Verdict {
	t.Helper()
	deadline := time.After(bound)
	for {
		if v, ok := w.pop(id); ok {
			if v.State != want {
				t.Fatalf("%s changed to %s (evidence %q), want %s", id, v.State, v.Evidence, want)
			}
			return v
		}
		select {
		case <-w.signal:
		case <-deadline:
			t.Fatalf("%s: no change to %s within %v", id, want, bound)
		}
	}
}

// realProber runs a Prober until the test ends.
func realProber(t *testing.T, opts Options) (*Prober, *watcher) {
	t.Helper()
	w := newWatcher()
	opts.OnChange = w.onChange
	if opts.Logger == nil {
		opts.Logger = zaptest.NewLogger(t)
	}
	p := New(opts)
	t.Cleanup(runProber(t, p))
	return p, w
}

// runProber starts p.Run. The returned stop cancels it and fails the test
// unless Run returns nil within bound; the test's end cancels it anyway.
func runProber(t *testing.T, p *Prober) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	var once sync.Once
	return func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("run: %v", err)
				}
			case <-time.After(bound):
				t.Errorf("Run did not return within %v of cancel", bound)
			}
		})
	}
}

// awaitGoroutines waits, bounded, until no more goroutines run than
// before: connections close asynchronously after Run returns.
func awaitGoroutines(t *testing.T, before int) {
	t.Helper()
	deadline := time.Now().Add(bound)
	for runtime.NumGoroutine() > before {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines before, %d after Run returned:\n%s", before, runtime.NumGoroutine(), buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func fastHTTP(name string) state.Check {
	return state.Check{
		Name: name, Kind: KindHTTP, Path: "/healthz", ExpectStatus: []int{200},
		Interval: 20 * time.Millisecond, Timeout: time.Second,
		HealthyThreshold: 2, UnhealthyThreshold: 3, StartupTimeout: time.Minute,
	}
}

func histogramCount(t *testing.T, reg *prometheus.Registry, kind, result string) uint64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "immutd_probe_duration_seconds" {
			continue
		}
		for _, m := range mf.GetMetric() {
			if labels(m)["kind"] == kind && labels(m)["result"] == result {
				return m.GetHistogram().GetSampleCount()
			}
		}
	}
	t.Fatalf("no immutd_probe_duration_seconds{kind=%q,result=%q}", kind, result)
	return 0
}

func labels(m *dto.Metric) map[string]string {
	out := map[string]string{}
	for _, l := range m.GetLabel() {
		out[l.GetName()] = l.GetValue()
	}
	return out
}

func TestHTTPHealthyThenUnhealthyThenHealthy(t *testing.T) {
	a := newApp(t)
	reg := prometheus.NewRegistry()
	p, w := realProber(t, Options{Registerer: reg})
	p.Set([]Target{{InstanceID: "web-1", Fleet: "web", Address: a.addr(), Checks: []state.Check{fastHTTP("ready")}}})

	v := w.await(t, "web-1", Healthy)
	st := v.Checks["ready"]
	if st.State != Healthy || st.ConsecutiveSuccesses != 2 || st.Last.Detail != "status 200" || !st.Last.OK || st.Kind != KindHTTP {
		t.Fatalf("check status %+v", st)
	}
	if n := histogramCount(t, reg, KindHTTP, "success"); n < 2 {
		t.Fatalf("%d successful http probes observed", n)
	}

	a.status.Store(http.StatusInternalServerError)
	v = w.await(t, "web-1", Unhealthy)
	want := fmt.Sprintf(`http "ready": GET http://%s/healthz: status 500 (3 consecutive failures)`, a.addr())
	if len(v.Evidence) != 1 || v.Evidence[0] != want {
		t.Fatalf("evidence %q, want %q", v.Evidence, want)
	}
	if st := v.Checks["ready"]; st.ConsecutiveFailures != 3 || st.State != Unhealthy {
		t.Fatalf("check status %+v", st)
	}
	if n := histogramCount(t, reg, KindHTTP, "failure"); n < 3 {
		t.Fatalf("%d failed http probes observed", n)
	}
	h := p.History("web-1")
	if len(h) < 5 || h[0].OK || h[0].Detail != "status 500" || h[0].Check != "ready" || h[0].Kind != KindHTTP {
		t.Fatalf("history %+v", h)
	}
	for i := 1; i < len(h); i++ {
		if h[i].At.After(h[i-1].At) {
			t.Fatalf("history not newest first at %d: %+v", i, h)
		}
	}

	a.status.Store(http.StatusOK)
	v = w.await(t, "web-1", Healthy)
	if len(v.Evidence) != 0 {
		t.Fatalf("healthy with evidence %q", v.Evidence)
	}
}

// reservePort returns a loopback address nothing listens on.
func reservePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

func TestConnectionRefused(t *testing.T) {
	addr := reservePort(t)
	p, w := realProber(t, Options{})
	tcp := state.Check{Name: "port", Kind: KindTCP, Interval: 20 * time.Millisecond, Timeout: time.Second,
		HealthyThreshold: 1, UnhealthyThreshold: 3, StartupTimeout: time.Second}
	web := fastHTTP("ready")
	web.StartupTimeout = time.Second
	// Seen long ago: the startup window is over, the first failure judges.
	long := time.Now().Add(-time.Hour)
	p.Set([]Target{
		{InstanceID: "gone-http", Address: addr, Checks: []state.Check{web}, Since: long},
		{InstanceID: "gone-tcp", Address: addr, Checks: []state.Check{tcp}, Since: long},
	})
	for id, want := range map[string]string{
		"gone-http": fmt.Sprintf(`http "ready": GET http://%s/healthz: connection refused (1 consecutive failure)`, addr),
		"gone-tcp":  fmt.Sprintf(`tcp "port": dial %s: connection refused (1 consecutive failure)`, addr),
	} {
		v := w.await(t, id, NeverHealthy)
		if len(v.Evidence) != 1 || v.Evidence[0] != want {
			t.Fatalf("%s evidence %q, want %q", id, v.Evidence, want)
		}
	}
	if h := p.History("gone-tcp"); len(h) == 0 || h[0].OK || h[0].Detail != "connection refused" {
		t.Fatalf("history %+v", h)
	}
}

func TestTimeout(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-release:
		}
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(release) })

	reg := prometheus.NewRegistry()
	p, w := realProber(t, Options{Registerer: reg})
	c := fastHTTP("ready")
	c.Timeout = 100 * time.Millisecond
	c.Interval = 200 * time.Millisecond
	c.StartupTimeout = 0
	p.Set([]Target{{InstanceID: "slow", Address: srv.Listener.Addr().String(), Checks: []state.Check{c}}})

	v := w.await(t, "slow", NeverHealthy)
	r := v.Checks["ready"].LastFailure
	if r.Detail != "timeout after 100ms" || r.Duration < 100*time.Millisecond || r.Duration > bound {
		t.Fatalf("result %+v", r)
	}
	if n := histogramCount(t, reg, KindHTTP, "failure"); n < 1 {
		t.Fatal("timeout not observed in the histogram")
	}
}

func TestTCPHealthy(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	accepted := make(chan struct{})
	go func() {
		defer close(accepted)
		for {
			c, err := l.Accept()
			if err != nil {
				return // listener closed
			}
			c.Close()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		<-accepted
	})

	p, w := realProber(t, Options{})
	p.Set([]Target{{InstanceID: "db-1", Address: l.Addr().String(), Checks: []state.Check{{
		Name: "port", Kind: KindTCP, Interval: 20 * time.Millisecond, Timeout: time.Second,
		HealthyThreshold: 1, UnhealthyThreshold: 3, StartupTimeout: time.Minute,
	}}}})
	v := w.await(t, "db-1", Healthy)
	if d := v.Checks["port"].Last.Detail; d != "connected" {
		t.Fatalf("detail %q", d)
	}
}

func TestRedirectIsAResult(t *testing.T) {
	var followed atomic.Int64
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/elsewhere", http.StatusFound)
	})
	mux.HandleFunc("/elsewhere", func(w http.ResponseWriter, r *http.Request) { followed.Add(1) })
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)

	p, w := realProber(t, Options{})
	refuse := fastHTTP("ready")
	refuse.StartupTimeout = 0
	accept := fastHTTP("ready")
	accept.ExpectStatus = []int{200, 302}
	p.Set([]Target{
		{InstanceID: "strict", Address: srv.Listener.Addr().String(), Checks: []state.Check{refuse}},
		{InstanceID: "lenient", Address: srv.Listener.Addr().String(), Checks: []state.Check{accept}},
	})
	got := map[string]Verdict{
		"strict":  w.await(t, "strict", NeverHealthy),
		"lenient": w.await(t, "lenient", Healthy),
	}
	if v := got["strict"]; v.State != NeverHealthy || v.Checks["ready"].LastFailure.Detail != "status 302" {
		t.Fatalf("strict: %+v", v)
	}
	if v := got["lenient"]; v.State != Healthy || v.Checks["ready"].Last.Detail != "status 302" {
		t.Fatalf("lenient: %+v", v)
	}
	if n := followed.Load(); n != 0 {
		t.Fatalf("redirect followed %d times", n)
	}
}

func TestSetRemovesTargets(t *testing.T) {
	a, b := newApp(t), newApp(t)
	p, w := realProber(t, Options{})
	p.Set([]Target{
		{InstanceID: "a", Address: a.addr(), Checks: []state.Check{fastHTTP("ready")}},
		{InstanceID: "b", Address: b.addr(), Checks: []state.Check{fastHTTP("ready")}},
	})
	w.await(t, "a", Healthy)
	w.await(t, "b", Healthy)

	p.Set([]Target{{InstanceID: "b", Address: b.addr(), Checks: []state.Check{fastHTTP("ready")}}})
	atRemoval := a.hits.Load()
	if _, ok := p.Verdict("a"); ok {
		t.Fatal("a has a verdict after removal")
	}
	// b, probed at the same pace, gets 10 more probes; a may get at most
	// the one that was already on the wire.
	for len(b.hit) > 0 {
		<-b.hit
	}
	b.waitHits(t, 10)
	if extra := a.hits.Load() - atRemoval; extra > 1 {
		t.Fatalf("a served %d probes after its removal", extra)
	}
	if p.History("a") != nil {
		t.Fatal("a has a history after removal")
	}
	if v := p.Verdicts(); len(v) != 1 || v["b"].State != Healthy {
		t.Fatalf("verdicts %+v", v)
	}
}

func TestSameRegistryTwice(t *testing.T) {
	reg := prometheus.NewRegistry()
	New(Options{Registerer: reg})
	New(Options{Registerer: reg})
	if n := histogramCount(t, reg, KindTCP, "success"); n != 0 {
		t.Fatalf("count %d", n)
	}
}

func TestNoGoroutineLeak(t *testing.T) {
	before := runtime.NumGoroutine()
	func() {
		apps := []*app{}
		var targets []Target
		for i := range 5 {
			a := &app{hit: make(chan struct{}, 1024)}
			a.status.Store(http.StatusOK)
			a.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.WriteHeader(int(a.status.Load()))
			}))
			apps = append(apps, a)
			targets = append(targets, Target{InstanceID: fmt.Sprint("i", i), Address: a.addr(),
				Checks: []state.Check{fastHTTP("ready"), {Name: "port", Kind: KindTCP, Interval: 20 * time.Millisecond, Timeout: time.Second, HealthyThreshold: 1, UnhealthyThreshold: 3, StartupTimeout: time.Minute}}})
		}
		defer func() {
			for _, a := range apps {
				a.srv.Close()
			}
		}()
		w := newWatcher()
		p := New(Options{Workers: 8, OnChange: w.onChange})
		p.Set(targets)
		stop := runProber(t, p)
		for i := range targets {
			w.await(t, fmt.Sprint("i", i), Healthy)
		}
		stop()
	}()
	awaitGoroutines(t, before)
}

func TestKeepAlive(t *testing.T) {
	var conns, hits atomic.Int64
	hit := make(chan struct{}, 1024)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		select {
		case hit <- struct{}{}:
		default:
		}
		fmt.Fprintln(w, "ok")
	}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Start()
	t.Cleanup(srv.Close)

	p, _ := realProber(t, Options{})
	p.Set([]Target{{InstanceID: "a", Address: srv.Listener.Addr().String(), Checks: []state.Check{fastHTTP("ready")}}})
	deadline := time.After(bound)
	for range 20 {
		select {
		case <-hit:
		case <-deadline:
			t.Fatalf("%d probes within %v", hits.Load(), bound)
		}
	}
	if n := conns.Load(); n != 1 {
		t.Fatalf("%d probes used %d connections, want 1", hits.Load(), n)
	}
}

func TestNoAddress(t *testing.T) {
	p, w := realProber(t, Options{})
	c := fastHTTP("ready")
	c.StartupTimeout = 0
	p.Set([]Target{{InstanceID: "a", Checks: []state.Check{c}}})
	v := w.await(t, "a", NeverHealthy)
	if want := `http "ready": GET http:///healthz: instance has no address (1 consecutive failure)`; len(v.Evidence) != 1 || v.Evidence[0] != want {
		t.Fatalf("evidence %q, want %q", v.Evidence, want)
	}
}

// TestFaultHookFailsEveryProbe: the fault-injection hook turns a healthy
// target unhealthy without the target changing, and releasing it heals.
func TestFaultHookFailsEveryProbe(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer srv.Close()
	var cut atomic.Bool
	changes := make(chan Verdict, 16)
	p := New(Options{Fault: func() error {
		if cut.Load() {
			return errors.New("fault injection: probes cut off")
		}
		return nil
	}, OnChange: func(_ string, v Verdict) { changes <- v }})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go p.Run(ctx)
	chk := state.Check{Name: "ready", Kind: KindHTTP, Path: "/", ExpectStatus: []int{200}, Interval: 50 * time.Millisecond,
		Timeout: 40 * time.Millisecond, HealthyThreshold: 1, UnhealthyThreshold: 2, StartupTimeout: time.Minute}
	p.Set([]Target{{InstanceID: "i", Address: strings.TrimPrefix(srv.URL, "http://"), Checks: []state.Check{chk}, Since: time.Now()}})
	want := func(s State) Verdict {
		t.Helper()
		for {
			select {
			case v := <-changes:
				if v.State == s {
					return v
				}
			case <-time.After(5 * time.Second):
				t.Fatalf("no %s verdict within 5s", s)
			}
		}
	}
	want(Healthy)
	cut.Store(true)
	v := want(Unhealthy)
	if len(v.Evidence) == 0 || !strings.Contains(v.Evidence[0], "fault injection") {
		t.Fatalf("evidence %v", v.Evidence)
	}
	cut.Store(false)
	want(Healthy)
}
