package haproxy_test

// These tests run a real haproxy (haproxytest) with small loopback HTTP
// servers behind it, and read HAProxy's state back through the socket
// independently of the code under test.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/immutd/immutd/internal/traffic"
	"github.com/immutd/immutd/internal/traffic/haproxy"
	"github.com/immutd/immutd/internal/traffic/haproxy/haproxytest"
)

// bound is how long any wait for a condition may take: generous, for
// loaded machines.
const bound = 30 * time.Second

func bounded(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), bound)
	t.Cleanup(cancel)
	return ctx
}

// app is a loopback HTTP server that answers its name. GET /slow tells
// started it began and answers only once release is closed.
type app struct {
	name    string
	srv     *httptest.Server
	started chan string
	release chan struct{}
	once    sync.Once
}

func newApp(t *testing.T, name string, started chan string) *app {
	t.Helper()
	a := &app{name: name, started: started, release: make(chan struct{})}
	a.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			select {
			case a.started <- a.name:
			case <-r.Context().Done():
				return
			}
			select {
			case <-a.release:
			case <-r.Context().Done():
				return
			}
		}
		io.WriteString(w, a.name)
	}))
	t.Cleanup(func() { a.unblock(); a.srv.Close() })
	return a
}

func (a *app) unblock() { a.once.Do(func() { close(a.release) }) }

func (a *app) addr() string { return a.srv.Listener.Addr().String() }

func (a *app) member() traffic.Member {
	return traffic.Member{Fleet: "web", InstanceID: "web-" + a.name, Address: a.addr()}
}

// get sends one request through addr on a connection of its own and
// returns the answering app's name, or an error.
func get(ctx context.Context, addr, path string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+path, nil)
	if err != nil {
		return "", err
	}
	req.Close = true
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("status %d: %s", resp.StatusCode, b)
	}
	return string(b), nil
}

// reached sends requests through addr until every name in want answered,
// and fails if another name answers or bound passes.
func reached(t *testing.T, addr string, want ...string) {
	t.Helper()
	ctx := bounded(t)
	left := map[string]bool{}
	allowed := map[string]bool{}
	for _, w := range want {
		left[w], allowed[w] = true, true
	}
	for n := 0; len(left) > 0; n++ {
		got, err := get(ctx, addr, "/")
		if err != nil {
			t.Fatalf("request %d through %s (want %v): %v", n, addr, want, err)
		}
		if !allowed[got] {
			t.Fatalf("request %d through %s answered by %q, want only %v", n, addr, got, want)
		}
		delete(left, got)
	}
}

// srvState is one server as "show servers state" lists it.
type srvState struct{ op, admin, check int }

// state reads the servers of backend straight from HAProxy.
func state(t *testing.T, h *haproxytest.Instance, backend string) map[string]srvState {
	t.Helper()
	out, err := h.Command("show servers state " + backend)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(out, "\n")
	if len(lines) < 2 || !strings.HasPrefix(lines[1], "# ") {
		t.Fatalf("show servers state %s: %q", backend, out)
	}
	col := map[string]int{}
	for i, c := range strings.Fields(lines[1][2:]) {
		col[c] = i
	}
	servers := map[string]srvState{}
	for _, l := range lines[2:] {
		f := strings.Fields(l)
		if len(f) < len(col) {
			continue
		}
		op, _ := strconv.Atoi(f[col["srv_op_state"]])
		admin, _ := strconv.Atoi(f[col["srv_admin_state"]])
		check, _ := strconv.Atoi(f[col["srv_check_state"]])
		servers[f[col["srv_name"]]] = srvState{op: op, admin: admin, check: check}
	}
	return servers
}

func (s srvState) ready() bool { return s.op == 2 && s.admin&(0x01|0x02|0x20|0x08|0x10) == 0 }
func (s srvState) drain() bool { return s.admin&0x08 != 0 && s.admin&0x01 == 0 }
func (s srvState) maint() bool { return s.admin&0x01 != 0 }

func newBackend(t *testing.T, h *haproxytest.Instance, cfg haproxy.Config) *haproxy.Backend {
	t.Helper()
	cfg.Socket = h.Socket
	if cfg.Backend == "" {
		cfg.Backend = "web"
	}
	b, err := haproxy.New(cfg, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

func must(t *testing.T, what string, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// eventually polls cond until it holds, failing the test after bound.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(bound)
	for delay := time.Millisecond; !cond(); delay = min(2*delay, 100*time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("not within %s: %s", bound, what)
		}
		time.Sleep(delay) // poll interval of a bounded wait, not a timing assumption
	}
}

// Admit makes requests through the frontend reach the member; admitting
// again changes nothing.
func TestAdmitRoutesTraffic(t *testing.T) {
	h := haproxytest.Start(t, haproxytest.Options{})
	b := newBackend(t, h, haproxy.Config{})
	ctx := bounded(t)
	a, c := newApp(t, "a", nil), newApp(t, "c", nil)

	must(t, "admit a", b.Admit(ctx, a.member()))
	if s := state(t, h, "web")["immutd-web-a"]; !s.ready() {
		t.Fatalf("after admit: %+v", s)
	}
	reached(t, h.Addr, "a")
	must(t, "admit c", b.Admit(ctx, c.member()))
	reached(t, h.Addr, "a", "c")

	before := state(t, h, "web")
	must(t, "admit a again", b.Admit(ctx, a.member()))
	must(t, "admit c again", b.Admit(ctx, c.member()))
	if after := state(t, h, "web"); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Errorf("second admit changed the state: %v -> %v", before, after)
	}
	n, known, err := b.Connections(ctx, a.member())
	if n != 0 || !known || err != nil {
		t.Errorf("connections of idle a: %d %v %v", n, known, err)
	}
}

// Admitting a member that is there with another address moves its server,
// with or without a health check.
func TestAdmitMovesAddress(t *testing.T) {
	t.Parallel() // the health check takes seconds
	for _, check := range []bool{false, true} {
		t.Run(fmt.Sprintf("check=%v", check), func(t *testing.T) {
			t.Parallel()
			h := haproxytest.Start(t, haproxytest.Options{})
			b := newBackend(t, h, haproxy.Config{Check: check})
			ctx := bounded(t)
			old, moved := newApp(t, "old", nil), newApp(t, "new", nil)
			m := old.member()
			must(t, "admit", b.Admit(ctx, m))
			reached(t, h.Addr, "old")
			m.Address = moved.addr()
			must(t, "admit at new address", b.Admit(ctx, m))
			reached(t, h.Addr, "new")
			if s := state(t, h, "web"); len(s) != 1 || !s["immutd-web-old"].ready() {
				t.Errorf("after move: %v", s)
			}
		})
	}
}

// Drain keeps an in-flight request alive, Connections reports it, new
// requests go elsewhere; once it ended, Remove deletes the server. Each
// call is idempotent.
func TestDrainThenRemove(t *testing.T) {
	h := haproxytest.Start(t, haproxytest.Options{})
	b := newBackend(t, h, haproxy.Config{})
	ctx := bounded(t)
	started := make(chan string, 1)
	apps := map[string]*app{"a": newApp(t, "a", started), "c": newApp(t, "c", started)}
	for _, a := range apps {
		must(t, "admit", b.Admit(ctx, a.member()))
	}

	slow := make(chan error, 1)
	go func() {
		got, err := get(ctx, h.Addr, "/slow")
		if err == nil && got == "" {
			err = errors.New("empty answer")
		}
		slow <- err
	}()
	var busy *app
	select {
	case name := <-started:
		busy = apps[name]
	case <-ctx.Done():
		t.Fatal("slow request did not start")
	}
	idle := apps["a"]
	if busy == idle {
		idle = apps["c"]
	}

	must(t, "drain", b.Drain(ctx, busy.member()))
	must(t, "drain again", b.Drain(ctx, busy.member()))
	if s := state(t, h, "web")["immutd-"+busy.member().InstanceID]; !s.drain() {
		t.Fatalf("after drain: %+v", s)
	}
	n, known, err := b.Connections(ctx, busy.member())
	if n != 1 || !known || err != nil {
		t.Fatalf("connections while the slow request runs: %d %v %v", n, known, err)
	}
	for i := 0; i < 6; i++ {
		got, err := get(ctx, h.Addr, "/")
		if err != nil || got != idle.name {
			t.Fatalf("request %d while %s drains: %q %v, want %s", i, busy.name, got, err, idle.name)
		}
	}

	busy.unblock()
	select {
	case err := <-slow:
		must(t, "slow request through the drained server", err)
	case <-ctx.Done():
		t.Fatal("slow request did not end")
	}
	eventually(t, "no connections left", func() bool {
		n, _, err := b.Connections(ctx, busy.member())
		must(t, "connections", err)
		return n == 0
	})
	must(t, "remove", b.Remove(ctx, busy.member()))
	if s, ok := state(t, h, "web")["immutd-"+busy.member().InstanceID]; ok {
		t.Fatalf("after remove: %+v", s)
	}
	must(t, "remove again", b.Remove(ctx, busy.member()))
	must(t, "drain of a removed member", b.Drain(ctx, busy.member()))
	if n, known, err := b.Connections(ctx, busy.member()); n != 0 || !known || err != nil {
		t.Errorf("connections of a removed member: %d %v %v", n, known, err)
	}
	reached(t, h.Addr, idle.name)
}

// Remove past the drain deadline, with a session still open, ends that
// session (shutdown sessions server) and deletes the server.
func TestRemoveCutsSessionsLeft(t *testing.T) {
	h := haproxytest.Start(t, haproxytest.Options{})
	b := newBackend(t, h, haproxy.Config{})
	ctx := bounded(t)
	started := make(chan string, 1)
	a := newApp(t, "a", started)
	must(t, "admit", b.Admit(ctx, a.member()))
	slow := make(chan error, 1)
	go func() { _, err := get(ctx, h.Addr, "/slow"); slow <- err }()
	select {
	case <-started:
	case <-ctx.Done():
		t.Fatal("slow request did not start")
	}
	must(t, "drain", b.Drain(ctx, a.member()))
	must(t, "remove", b.Remove(ctx, a.member()))
	if _, ok := state(t, h, "web")["immutd-web-a"]; ok {
		t.Fatal("server still there after remove")
	}
	select {
	case err := <-slow:
		if err == nil {
			t.Fatal("slow request completed; want it cut by remove")
		}
		t.Logf("slow request cut: %v", err)
	case <-ctx.Done():
		t.Fatal("slow request was not cut")
	}
}

// With Check, Admit returns only once HAProxy's own check passed; a
// member whose check fails never gets traffic and Admit fails when ctx
// ends.
func TestAdmitWithCheck(t *testing.T) {
	t.Parallel() // the health check takes seconds
	h := haproxytest.Start(t, haproxytest.Options{Backends: []haproxytest.Backend{
		{Name: "web", Lines: []string{"option httpchk GET /"}},
	}})
	b := newBackend(t, h, haproxy.Config{Check: true})
	ctx := bounded(t)
	a := newApp(t, "a", nil)
	must(t, "admit", b.Admit(ctx, a.member()))
	if s := state(t, h, "web")["immutd-web-a"]; !s.ready() {
		t.Fatalf("after admit: %+v", s)
	}
	reached(t, h.Addr, "a")
	must(t, "admit again", b.Admit(ctx, a.member()))

	// A port nothing listens on.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, "listen", err)
	dead := traffic.Member{InstanceID: "web-dead", Address: l.Addr().String()}
	l.Close()
	short, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	err = b.Admit(short, dead)
	if err == nil || !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "health check has not passed") {
		t.Fatalf("admit of a dead member: %v", err)
	}
	if s := state(t, h, "web")["immutd-web-dead"]; !s.drain() || s.op != 0 {
		t.Fatalf("dead member after failed admit: %+v, want drain and down", s)
	}
	for i := 0; i < 4; i++ {
		if got, err := get(ctx, h.Addr, "/"); err != nil || got != "a" {
			t.Fatalf("request %d: %q %v, want only a", i, got, err)
		}
	}
	must(t, "remove dead", b.Remove(ctx, dead))

	// Sync re-creates a lost server with its check, without waiting for it.
	h.Reload(t)
	must(t, "sync after reload", b.Sync(ctx, []traffic.Member{a.member()}, func(string) bool { return true }))
	if s := state(t, h, "web")["immutd-web-a"]; s.admin&0x01 != 0 || s.check&0x06 != 0x06 {
		t.Errorf("after sync, immutd-web-a: %+v, want it ready with its check configured and enabled", s)
	}
	reached(t, h.Addr, "a")

	must(t, "remove a", b.Remove(ctx, a.member()))
	if s := state(t, h, "web"); len(s) != 0 {
		t.Errorf("after removes: %v", s)
	}
}

// A server added without a check is re-created with one when Check is
// turned on while it is out of traffic.
func TestAdmitAddsCheckToServerOutOfTraffic(t *testing.T) {
	t.Parallel() // the health check takes seconds
	h := haproxytest.Start(t, haproxytest.Options{})
	a := newApp(t, "a", nil)
	ctx := bounded(t)
	out, err := h.Command("add server web/immutd-web-a " + a.addr() + " disabled")
	if err != nil || !strings.Contains(out, "New server registered") {
		t.Fatalf("add server: %q %v", out, err)
	}
	b := newBackend(t, h, haproxy.Config{Check: true})
	must(t, "admit", b.Admit(ctx, a.member()))
	reached(t, h.Addr, "a")
	out, err = h.Command("show servers state web")
	if err != nil || !strings.Contains(out, " immutd-web-a ") {
		t.Fatalf("state: %q %v", out, err)
	}
}

// Sync removes unknown servers with the prefix, leaves an operator's
// server and known ones alone, and re-creates what a reload lost.
func TestSyncRestoresAfterReloadAndRemovesUnknown(t *testing.T) {
	op := newApp(t, "op", nil)
	h := haproxytest.Start(t, haproxytest.Options{Backends: []haproxytest.Backend{
		{Name: "web", Servers: []haproxytest.Server{{Name: "op", Addr: op.addr()}}},
	}})
	b := newBackend(t, h, haproxy.Config{})
	ctx := bounded(t)
	a, c, kept, stale := newApp(t, "a", nil), newApp(t, "c", nil), newApp(t, "kept", nil), newApp(t, "stale", nil)
	admitted := []traffic.Member{a.member(), c.member()}
	known := map[string]bool{"web-a": true, "web-c": true, "web-kept": true}
	keep := func(id string) bool { return known[id] }

	must(t, "admit a", b.Admit(ctx, a.member()))
	must(t, "admit c", b.Admit(ctx, c.member()))
	for _, cmd := range []string{
		// Dynamic servers start in maintenance in 2.6; each is set ready.
		"add server web/immutd-web-kept " + kept.addr(), // being admitted by the executor
		"set server web/immutd-web-kept state ready",
		"add server web/immutd-web-stale " + stale.addr(),
		"set server web/immutd-web-stale state ready",
		"add server web/immutd-x:y " + stale.addr(), // prefix, but not an instance id
		"set server web/immutd-x:y state ready",
		"add server web/other " + stale.addr(), // an operator's runtime server
		"set server web/other state ready",
		"set server web/immutd-web-a state maint", // admitted, but out of traffic
	} {
		if out, err := h.Command(cmd); err != nil || strings.Contains(out, "No such") {
			t.Fatalf("%s: %q %v", cmd, out, err)
		}
	}

	must(t, "sync", b.Sync(ctx, admitted, keep))
	s := state(t, h, "web")
	if _, ok := s["immutd-web-stale"]; ok {
		t.Error("unknown server immutd-web-stale not removed")
	}
	for _, name := range []string{"op", "other", "immutd-x:y", "immutd-web-kept", "immutd-web-a", "immutd-web-c"} {
		if !s[name].ready() {
			t.Errorf("%s: %+v, want it ready", name, s[name])
		}
	}
	must(t, "sync again", b.Sync(ctx, admitted, keep))
	if again := state(t, h, "web"); fmt.Sprint(again) != fmt.Sprint(s) {
		t.Errorf("second sync changed the state: %v -> %v", s, again)
	}

	h.Reload(t)
	s = state(t, h, "web")
	if len(s) != 1 || !s["op"].ready() {
		t.Fatalf("after reload: %v, want only op", s)
	}
	must(t, "sync after reload", b.Sync(ctx, admitted, keep))
	s = state(t, h, "web")
	for _, name := range []string{"op", "immutd-web-a", "immutd-web-c"} {
		if !s[name].ready() {
			t.Errorf("after reload and sync, %s: %+v, want it ready", name, s[name])
		}
	}
	if len(s) != 3 {
		t.Errorf("after reload and sync: %v", s)
	}
	reached(t, h.Addr, "op", "a", "c")
}

// Sync puts an unknown server that still has a session in maintenance and
// leaves the session alone; a later pass deletes the server once the
// session ended.
func TestSyncWaitsForSessionsOfUnknown(t *testing.T) {
	h := haproxytest.Start(t, haproxytest.Options{})
	b := newBackend(t, h, haproxy.Config{})
	ctx := bounded(t)
	started := make(chan string, 1)
	gone := newApp(t, "gone", started)
	must(t, "admit", b.Admit(ctx, gone.member()))
	slow := make(chan error, 1)
	go func() { _, err := get(ctx, h.Addr, "/slow"); slow <- err }()
	select {
	case <-started:
	case <-ctx.Done():
		t.Fatal("slow request did not start")
	}
	none := func(string) bool { return false }
	must(t, "sync", b.Sync(ctx, nil, none))
	if s, ok := state(t, h, "web")["immutd-web-gone"]; !ok || !s.maint() {
		t.Fatalf("after sync with a session open: %+v %v, want it in maintenance", s, ok)
	}
	gone.unblock()
	select {
	case err := <-slow:
		must(t, "slow request through the unknown server", err)
	case <-ctx.Done():
		t.Fatal("slow request did not end")
	}
	eventually(t, "sync deletes the unknown server", func() bool {
		must(t, "sync", b.Sync(ctx, nil, none))
		_, ok := state(t, h, "web")["immutd-web-gone"]
		return !ok
	})
}

// Calls for different members may run at once.
func TestConcurrentCalls(t *testing.T) {
	h := haproxytest.Start(t, haproxytest.Options{})
	b := newBackend(t, h, haproxy.Config{})
	ctx := bounded(t)
	var apps []*app
	for i := range 8 {
		apps = append(apps, newApp(t, fmt.Sprint(i), nil))
	}
	run := func(what string, f func(traffic.Member) error) {
		t.Helper()
		errs := make(chan error, len(apps))
		for _, a := range apps {
			go func() { errs <- f(a.member()) }()
		}
		for range apps {
			must(t, what, <-errs)
		}
	}
	run("admit", func(m traffic.Member) error { return b.Admit(ctx, m) })
	if s := state(t, h, "web"); len(s) != len(apps) {
		t.Fatalf("after concurrent admits: %v", s)
	}
	run("drain", func(m traffic.Member) error { return b.Drain(ctx, m) })
	run("remove", func(m traffic.Member) error { return b.Remove(ctx, m) })
	if s := state(t, h, "web"); len(s) != 0 {
		t.Fatalf("after concurrent removes: %v", s)
	}
}

// A command HAProxy refuses gives an error quoting its answer.
func TestRefusedCommandsQuoteHAProxy(t *testing.T) {
	h := haproxytest.Start(t, haproxytest.Options{Backends: []haproxytest.Backend{
		{Name: "web"}, {Name: "static", Balance: "source"},
	}})
	ctx := bounded(t)
	a := newApp(t, "a", nil)
	err := newBackend(t, h, haproxy.Config{Backend: "static"}).Admit(ctx, a.member())
	if err == nil || !strings.Contains(err.Error(), `refused "add server static/immutd-web-a `) ||
		!strings.Contains(err.Error(), `"Backend must use a dynamic load balancing to support dynamic servers."`) ||
		!strings.Contains(err.Error(), h.Socket) || errors.Is(err, traffic.ErrUnreachable) {
		t.Errorf("admit into a static backend: %v", err)
	}
	nosuch := newBackend(t, h, haproxy.Config{Backend: "nosuch"})
	if err := nosuch.Admit(ctx, a.member()); err == nil || !strings.Contains(err.Error(), `"Can't find backend."`) {
		t.Errorf("admit into a missing backend: %v", err)
	}
	if _, _, err := nosuch.Connections(ctx, a.member()); err == nil || !strings.Contains(err.Error(), "refused \"show stat nosuch 4 -1\"") {
		t.Errorf("connections in a missing backend: %v", err)
	}
}

// An answer longer than the bound is an error, not read to its end.
func TestAnswerBound(t *testing.T) {
	h := haproxytest.Start(t, haproxytest.Options{})
	b := newBackend(t, h, haproxy.Config{})
	haproxy.SetMaxAnswer(b, 64)
	err := b.Drain(bounded(t), traffic.Member{InstanceID: "web-a"})
	if err == nil || !strings.Contains(err.Error(), `answer to "show servers state web" exceeds 64 bytes`) || !strings.Contains(err.Error(), h.Socket) {
		t.Errorf("drain with a 64-byte bound: %v", err)
	}
}
