package probe

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/immutd/immutd/internal/state"
)

func httpJob(h *httpChecker, address, path string) *job {
	c := normalize(h, state.Check{Name: "ready", Kind: KindHTTP, Path: path, Interval: time.Second, Timeout: 2 * time.Second})
	return &job{check: c, address: address, timeoutDetail: timeoutDetail(c.Timeout)}
}

func runHTTP(h *httpChecker, j *job, timeout time.Duration) (bool, string) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return h.run(ctx, j)
}

// rawServer answers each request on a connection with answer(n), n
// counting requests on that connection from 1, and closes the connection
// when close(n) says so, without saying so in the response.
func rawServer(t *testing.T, answer func(n int) string, closeAfter func(n int) bool) (string, *atomic.Int64) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	var conns atomic.Int64
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns.Add(1)
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				for n := 1; ; n++ {
					req, err := http.ReadRequest(br)
					if err != nil {
						return
					}
					req.Body.Close()
					if _, err := c.Write([]byte(answer(n))); err != nil || closeAfter(n) {
						return
					}
				}
			}()
		}
	}()
	return ln.Addr().String(), &conns
}

const ok200 = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

// A kept connection the instance closed meanwhile (a restart, an idle
// timeout) costs no failed probe: the probe goes again on a new one.
func TestHTTPProbeRetriesAConnectionClosedWhileIdle(t *testing.T) {
	addr, conns := rawServer(t, func(int) string { return ok200 }, func(int) bool { return true })
	h := newHTTPChecker(checkEnv{dialer: &net.Dialer{}})
	defer h.closeIdle()
	j := httpJob(h, addr, "/healthz")
	for i := 0; i < 5; i++ {
		if ok, d := runHTTP(h, j, 5*time.Second); !ok || d != "status 200" {
			t.Fatalf("probe %d: %v %q", i, ok, d)
		}
	}
	if n := conns.Load(); n != 5 {
		t.Fatalf("%d connections for 5 probes of a server closing each", n)
	}
}

// Steady probing reuses one connection per instance.
func TestHTTPProbeKeepsOneConnection(t *testing.T) {
	addr, conns := rawServer(t, func(int) string { return ok200 }, func(int) bool { return false })
	h := newHTTPChecker(checkEnv{dialer: &net.Dialer{}})
	defer h.closeIdle()
	j := httpJob(h, addr, "/healthz")
	for i := 0; i < 20; i++ {
		if ok, d := runHTTP(h, j, 5*time.Second); !ok {
			t.Fatalf("probe %d: %q", i, d)
		}
	}
	if n := conns.Load(); n != 1 {
		t.Fatalf("%d connections for 20 probes", n)
	}
	// A server saying Connection: close, or a body longer than what a
	// probe reads, gives up the connection.
	for _, c := range []struct{ name, answer string }{
		{"close", "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"},
		{"long body", fmt.Sprintf("HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", maxBody+10, strings.Repeat("x", maxBody+10))},
	} {
		addr, conns := rawServer(t, func(int) string { return c.answer }, func(int) bool { return false })
		j := httpJob(h, addr, "/healthz")
		for i := 0; i < 3; i++ {
			if ok, d := runHTTP(h, j, 5*time.Second); !ok || d != "status 200" {
				t.Fatalf("%s: probe %d: %v %q", c.name, i, ok, d)
			}
		}
		if n := conns.Load(); n != 3 {
			t.Fatalf("%s: %d connections for 3 probes; want one each", c.name, n)
		}
	}
}

// What an instance sends is bounded: endless headers fail the probe
// instead of filling the agent's memory; a status the check does not
// expect fails it with the status.
func TestHTTPProbeBoundsTheAnswer(t *testing.T) {
	huge := "HTTP/1.1 200 OK\r\n" + strings.Repeat("X-Junk: "+strings.Repeat("j", 1000)+"\r\n", 100) + "\r\n"
	addr, _ := rawServer(t, func(int) string { return huge }, func(int) bool { return false })
	h := newHTTPChecker(checkEnv{dialer: &net.Dialer{}})
	defer h.closeIdle()
	if ok, d := runHTTP(h, httpJob(h, addr, "/healthz"), 5*time.Second); ok || !strings.Contains(d, "longer than 80 KiB") {
		t.Fatalf("100 KB of headers: %v %q; want a failure saying the answer is too long", ok, d)
	}
	addr, _ = rawServer(t, func(int) string { return "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n" }, func(int) bool { return false })
	if ok, d := runHTTP(h, httpJob(h, addr, "/healthz"), 5*time.Second); ok || d != "status 503" {
		t.Fatalf("503: %v %q", ok, d)
	}
	if ok, d := runHTTP(h, httpJob(h, addr, "/a b"), 5*time.Second); ok || !strings.Contains(d, "bad request") {
		t.Fatalf("a path with a space: %v %q", ok, d)
	}
}

// A server that accepts and never answers times the probe out with the
// check's timeout detail; cancelling the probe (the instance dropped)
// ends it at once.
func TestHTTPProbeTimesOutAndCancels(t *testing.T) {
	addr, _ := rawServer(t, func(int) string { time.Sleep(time.Hour); return "" }, func(int) bool { return false })
	h := newHTTPChecker(checkEnv{dialer: &net.Dialer{}})
	defer h.closeIdle()
	j := httpJob(h, addr, "/healthz")
	j.timeoutDetail = "timeout after 200ms"
	if ok, d := runHTTP(h, j, 200*time.Millisecond); ok || d != "timeout after 200ms" {
		t.Fatalf("hung server: %v %q", ok, d)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan string, 1)
	go func() { _, d := h.run(ctx, j); done <- d }()
	cancel()
	select {
	case d := <-done:
		if strings.Contains(d, "timeout") {
			t.Fatalf("cancelled probe says %q", d)
		}
	case <-time.After(time.Minute):
		t.Fatal("a cancelled probe still runs after a minute")
	}
}

// Idle connections cost no goroutine, and are capped: beyond the cap a
// probe reconnects instead of keeping its socket.
func TestHTTPIdleConnectionsCostNoGoroutine(t *testing.T) {
	const n = 100
	addrs := make([]string, n)
	conns := make([]*atomic.Int64, n)
	for i := range addrs {
		addrs[i], conns[i] = rawServer(t, func(int) string { return ok200 }, func(int) bool { return false })
	}
	h := newHTTPChecker(checkEnv{dialer: &net.Dialer{}})
	defer h.closeIdle()
	before := runtime.NumGoroutine()
	for i, a := range addrs {
		if ok, d := runHTTP(h, httpJob(h, a, "/healthz"), 5*time.Second); !ok {
			t.Fatalf("probe %d: %q", i, d)
		}
	}
	// Each kept connection has one goroutine, the test server's.
	if h.nidle != n {
		t.Fatalf("%d idle connections kept for %d instances", h.nidle, n)
	}
	if grown := runtime.NumGoroutine() - before; grown > n+5 {
		t.Fatalf("%d goroutines more for %d kept connections, whose servers take %d", grown, n, n)
	}
	h.closeIdle()
	h.maxIdle = 10
	for round := 0; round < 2; round++ {
		for i, a := range addrs {
			if ok, d := runHTTP(h, httpJob(h, a, "/healthz"), 5*time.Second); !ok {
				t.Fatalf("probe %d: %q", i, d)
			}
		}
	}
	if h.nidle != 10 {
		t.Fatalf("%d idle connections kept with a cap of 10", h.nidle)
	}
	var total int64
	for _, c := range conns {
		total += c.Load()
	}
	// 100 connections in the first part; then 10 kept and reused, 90
	// dialled in each of the two rounds.
	if want := int64(n + 10 + 2*90); total != want {
		t.Fatalf("%d connections in all; want %d", total, want)
	}
}
