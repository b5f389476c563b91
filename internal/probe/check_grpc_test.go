package probe

import (
	"fmt"
	"net"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/immutd/immutd/internal/state"
)

// countingListener counts the connections it accepted and those still
// open (closed by neither side).
type countingListener struct {
	net.Listener
	accepted atomic.Int64
	open     atomic.Int64
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	l.accepted.Add(1)
	l.open.Add(1)
	return &countedConn{Conn: c, l: l}, nil
}

type countedConn struct {
	net.Conn
	l    *countingListener
	once sync.Once
}

func (c *countedConn) Close() error {
	c.once.Do(func() { c.l.open.Add(-1) })
	return c.Conn.Close()
}

// healthApp is an in-process gRPC server on loopback with the standard
// health service, whose statuses the test sets.
type healthApp struct {
	srv    *grpc.Server
	health *health.Server
	ln     *countingListener
}

func newHealthApp(t *testing.T) *healthApp {
	t.Helper()
	a, served := startHealthApp(t)
	t.Cleanup(func() {
		a.srv.Stop()
		<-served
	})
	return a
}

// startHealthApp starts a healthApp; the channel is closed when its
// server has stopped serving.
func startHealthApp(t *testing.T) (*healthApp, <-chan struct{}) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := &healthApp{srv: grpc.NewServer(), health: health.NewServer(), ln: &countingListener{Listener: l}}
	healthpb.RegisterHealthServer(a.srv, a.health)
	served := make(chan struct{})
	go func() {
		defer close(served)
		a.srv.Serve(a.ln)
	}()
	return a, served
}

func (a *healthApp) addr() string { return a.ln.Addr().String() }

func fastGRPC(name, service string) state.Check {
	return state.Check{
		Name: name, Kind: KindGRPC, Service: service,
		Interval: 20 * time.Millisecond, Timeout: time.Second,
		HealthyThreshold: 2, UnhealthyThreshold: 3, StartupTimeout: time.Minute,
	}
}

// waitUntil polls cond until it holds, for at most bound.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(bound)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, bound)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestGRPCServingThenNotServingThenServing(t *testing.T) {
	a := newHealthApp(t)
	p, w := realProber(t, Options{})
	p.Set([]Target{{InstanceID: "rpc-1", Fleet: "rpc", Address: a.addr(), Checks: []state.Check{fastGRPC("health", "")}}})

	v := w.await(t, "rpc-1", Healthy)
	if st := v.Checks["health"]; st.Kind != KindGRPC || st.Last.Detail != "SERVING" || !st.Last.OK {
		t.Fatalf("check status %+v", st)
	}

	a.health.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
	v = w.await(t, "rpc-1", Unhealthy)
	want := fmt.Sprintf(`grpc "health": grpc.health.v1.Health/Check %s: NOT_SERVING (3 consecutive failures)`, a.addr())
	if len(v.Evidence) != 1 || v.Evidence[0] != want {
		t.Fatalf("evidence %q, want %q", v.Evidence, want)
	}

	a.health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	w.await(t, "rpc-1", Healthy)
	// A NOT_SERVING answer is an answer: the connection is kept.
	if n := a.ln.accepted.Load(); n != 1 {
		t.Fatalf("%d connections for one instance, want 1", n)
	}
}

func TestGRPCService(t *testing.T) {
	a := newHealthApp(t)
	p, w := realProber(t, Options{})
	c := fastGRPC("users", "users.v1.Users")
	c.StartupTimeout = 0
	p.Set([]Target{{InstanceID: "rpc-1", Address: a.addr(), Checks: []state.Check{c}}})

	v := w.await(t, "rpc-1", NeverHealthy)
	want := fmt.Sprintf(`grpc "users": grpc.health.v1.Health/Check %s service "users.v1.Users": SERVICE_UNKNOWN (1 consecutive failure)`, a.addr())
	if len(v.Evidence) != 1 || v.Evidence[0] != want {
		t.Fatalf("evidence %q, want %q", v.Evidence, want)
	}

	a.health.SetServingStatus("users.v1.Users", healthpb.HealthCheckResponse_SERVING)
	w.await(t, "rpc-1", Healthy)
	a.health.SetServingStatus("users.v1.Users", healthpb.HealthCheckResponse_UNKNOWN)
	v = w.await(t, "rpc-1", Unhealthy)
	if d := v.Checks["users"].LastFailure.Detail; d != "UNKNOWN" {
		t.Fatalf("detail %q, want UNKNOWN", d)
	}
	// The whole server's status is another entry: it stays SERVING.
	if n := a.ln.accepted.Load(); n != 1 {
		t.Fatalf("%d connections, want 1: an unknown service is an answer", n)
	}
}

func TestGRPCConnectionRefused(t *testing.T) {
	addr := reservePort(t)
	p, w := realProber(t, Options{})
	p.Set([]Target{{InstanceID: "gone", Address: addr, Checks: []state.Check{fastGRPC("health", "")}, Since: time.Now().Add(-time.Hour)}})
	v := w.await(t, "gone", NeverHealthy)
	want := fmt.Sprintf(`grpc "health": grpc.health.v1.Health/Check %s: connection refused (1 consecutive failure)`, addr)
	if len(v.Evidence) != 1 || v.Evidence[0] != want {
		t.Fatalf("evidence %q, want %q", v.Evidence, want)
	}
}

// TestGRPCTimeout: a server that accepts and never answers costs the
// check's timeout, no more.
func TestGRPCTimeout(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var held []net.Conn
	accepting := make(chan struct{})
	go func() {
		defer close(accepting)
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			held = append(held, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		<-accepting
		mu.Lock()
		defer mu.Unlock()
		for _, c := range held {
			c.Close()
		}
	})

	p, w := realProber(t, Options{})
	c := fastGRPC("health", "")
	c.Timeout, c.Interval, c.StartupTimeout = 100*time.Millisecond, 200*time.Millisecond, 0
	p.Set([]Target{{InstanceID: "mute", Address: l.Addr().String(), Checks: []state.Check{c}}})
	v := w.await(t, "mute", NeverHealthy)
	r := v.Checks["health"].LastFailure
	if r.Detail != "timeout after 100ms" || r.Duration < 100*time.Millisecond || r.Duration > bound {
		t.Fatalf("result %+v", r)
	}
}

// TestGRPCRedialsAfterFailure: while the server is away every failed
// probe dials afresh (no reconnect backoff holds a recovered instance
// back), and the instance is healthy again once it answers.
func TestGRPCRedialsAfterFailure(t *testing.T) {
	sb := newSwitchboard(t)
	hs := health.NewServer()
	serve := func() (stop func()) {
		srv := grpc.NewServer()
		healthpb.RegisterHealthServer(srv, hs)
		v := sb.connect()
		done := make(chan struct{})
		go func() {
			defer close(done)
			srv.Serve(v)
		}()
		return func() {
			sb.disconnect()
			srv.Stop()
			<-done
		}
	}

	p, w := realProber(t, Options{})
	stop := serve()
	p.Set([]Target{{InstanceID: "rpc-1", Address: sb.addr(), Checks: []state.Check{fastGRPC("health", "")}}})
	w.await(t, "rpc-1", Healthy)
	stop()
	before := sb.accepted.Load()
	v := w.await(t, "rpc-1", Unhealthy)
	if d := v.Checks["health"].LastFailure.Detail; d == "" || d == "SERVING" {
		t.Fatalf("failure detail %q", d)
	}
	// Twenty failures dial twenty times; gRPC's own reconnect backoff
	// (1s, growing 1.6 times a try) would have dialed a handful by then.
	const failures = 20
	waitUntil(t, "20 failed probes", func() bool {
		n := 0
		for _, r := range p.History("rpc-1") {
			if !r.OK {
				n++
			}
		}
		return n >= failures
	})
	waitUntil(t, "a dial per failed probe", func() bool { return sb.accepted.Load()-before >= failures })
	stop = serve()
	defer stop()
	w.await(t, "rpc-1", Healthy)
}

// switchboard accepts on one loopback listener for the whole test, so
// the address is never free for another, and hands each connection to
// the listener of the server of the moment, or closes it at once while
// there is none.
type switchboard struct {
	l        net.Listener
	accepted atomic.Int64

	mu  sync.Mutex
	cur *boardListener
}

func newSwitchboard(t *testing.T) *switchboard {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	sb := &switchboard{l: l}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			sb.accepted.Add(1)
			sb.mu.Lock()
			cur := sb.cur
			sb.mu.Unlock()
			if cur == nil {
				c.Close()
				continue
			}
			select {
			case cur.conns <- c:
			case <-cur.done:
				c.Close()
			}
		}
	}()
	t.Cleanup(func() {
		l.Close()
		<-done
	})
	return sb
}

func (sb *switchboard) addr() string { return sb.l.Addr().String() }

// connect gives the connections to come to a new listener.
func (sb *switchboard) connect() *boardListener {
	b := &boardListener{addr: sb.l.Addr(), conns: make(chan net.Conn), done: make(chan struct{})}
	sb.mu.Lock()
	sb.cur = b
	sb.mu.Unlock()
	return b
}

// disconnect refuses the connections to come.
func (sb *switchboard) disconnect() {
	sb.mu.Lock()
	sb.cur = nil
	sb.mu.Unlock()
}

type boardListener struct {
	addr  net.Addr
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
}

func (b *boardListener) Accept() (net.Conn, error) {
	select {
	case c := <-b.conns:
		return c, nil
	case <-b.done:
		return nil, net.ErrClosed
	}
}

func (b *boardListener) Close() error {
	b.once.Do(func() { close(b.done) })
	return nil
}

func (b *boardListener) Addr() net.Addr { return b.addr }

// TestGRPCConnectionsClosed: the connection of an instance that was
// dropped, or that moved to another address, is closed at once, and the
// end of Run closes the others.
func TestGRPCConnectionsClosed(t *testing.T) {
	a, b, c := newHealthApp(t), newHealthApp(t), newHealthApp(t)
	w := newWatcher()
	p := New(Options{OnChange: w.onChange})
	stop := runProber(t, p)
	p.Set([]Target{
		{InstanceID: "a", Address: a.addr(), Checks: []state.Check{fastGRPC("health", ""), fastGRPC("again", "")}},
		{InstanceID: "b", Address: b.addr(), Checks: []state.Check{fastGRPC("health", "")}},
	})
	w.await(t, "a", Healthy)
	w.await(t, "b", Healthy)
	if n := a.ln.accepted.Load(); n != 1 {
		t.Fatalf("two grpc checks of one instance used %d connections, want 1", n)
	}

	p.Set([]Target{{InstanceID: "b", Address: b.addr(), Checks: []state.Check{fastGRPC("health", "")}}})
	waitUntil(t, "the dropped instance's connection to close", func() bool { return a.ln.open.Load() == 0 })
	if n := b.ln.open.Load(); n != 1 {
		t.Fatalf("%d connections open to b, want 1", n)
	}

	p.Set([]Target{{InstanceID: "b", Address: c.addr(), Checks: []state.Check{fastGRPC("health", "")}}})
	w.await(t, "b", Starting) // its checks start over at the new address
	w.await(t, "b", Healthy)
	waitUntil(t, "the connection to the old address to close", func() bool { return b.ln.open.Load() == 0 })
	if n := c.ln.open.Load(); n != 1 {
		t.Fatalf("%d connections open to the new address, want 1", n)
	}

	stop()
	waitUntil(t, "connections to close when Run ends", func() bool { return c.ln.open.Load() == 0 })
}

func TestGRPCNotAGRPCServer(t *testing.T) {
	a := newApp(t) // HTTP/1.1 only
	p, w := realProber(t, Options{})
	c := fastGRPC("health", "")
	c.StartupTimeout = 0
	p.Set([]Target{{InstanceID: "web", Address: a.addr(), Checks: []state.Check{c}}})
	v := w.await(t, "web", NeverHealthy)
	if d := v.Checks["health"].LastFailure.Detail; !strings.HasPrefix(d, "Unavailable: ") || len(d) > maxDetail+3 {
		t.Fatalf("detail %q", d)
	}
}

// TestGRPCNoGoroutineLeak: once Run has returned and the servers are
// gone, no goroutine of a gRPC connection is left.
func TestGRPCNoGoroutineLeak(t *testing.T) {
	before := runtime.NumGoroutine()
	func() {
		var targets []Target
		for i := range 3 {
			a, served := startHealthApp(t)
			defer func() {
				a.srv.Stop()
				<-served
			}()
			targets = append(targets, Target{InstanceID: fmt.Sprint("i", i), Address: a.addr(), Checks: []state.Check{fastGRPC("health", "")}})
		}
		w := newWatcher()
		p := New(Options{Workers: 4, OnChange: w.onChange})
		p.Set(targets)
		stop := runProber(t, p)
		for _, tg := range targets {
			w.await(t, tg.InstanceID, Healthy)
		}
		// One dropped while Run runs, the others closed by its end.
		p.Set(targets[1:])
		stop()
	}()
	awaitGoroutines(t, before)
}
