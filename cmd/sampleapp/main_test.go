package main

import (
	"context"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

func get(t *testing.T, h http.Handler, method, target string) (int, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(method, target, nil))
	body, err := io.ReadAll(rec.Result().Body)
	if err != nil {
		t.Fatal(err)
	}
	return rec.Code, string(body)
}

func TestIndexShowsIdentityAndConfig(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "config"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "config", "app.conf"), []byte(`greeting = "hi"`), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Chdir(dir)
	a := &app{version: "9.9.9", instance: "web-1", fleet: "web", image: "sha256:abc"}
	code, body := get(t, a.handler(), "GET", "/")
	if code != http.StatusOK {
		t.Fatalf("GET / = %d", code)
	}
	for _, want := range []string{"sampleapp 9.9.9\n", "instance: web-1\n", "fleet: web\n", "image: sha256:abc\n", "config/app.conf:\ngreeting = \"hi\"\n"} {
		if !strings.Contains(body, want) {
			t.Errorf("GET / body %q lacks %q", body, want)
		}
	}
}

func TestIndexWithoutConfig(t *testing.T) {
	t.Chdir(t.TempDir())
	a := &app{version: "1"}
	_, body := get(t, a.handler(), "GET", "/")
	if !strings.Contains(body, "config/app.conf: (none)") {
		t.Errorf("body %q", body)
	}
	if code, _ := get(t, a.handler(), "GET", "/nope"); code != http.StatusNotFound {
		t.Errorf("GET /nope = %d, want 404", code)
	}
}

func TestFailAndRecover(t *testing.T) {
	a := &app{}
	h := a.handler()
	steps := []struct {
		method, path string
		wantCode     int
		wantBody     string
	}{
		{"GET", "/healthz", 200, "ok\n"},
		{"GET", "/fail", 405, ""},
		{"POST", "/fail", 200, "failing\n"},
		{"GET", "/healthz", 500, "failing\n"},
		{"GET", "/", 500, "failing\n"},
		{"GET", "/slow?ms=0", 500, "failing\n"},
		{"POST", "/recover", 200, "ok\n"},
		{"GET", "/healthz", 200, "ok\n"},
		{"GET", "/", 200, ""},
	}
	for _, s := range steps {
		code, body := get(t, h, s.method, s.path)
		if code != s.wantCode || (s.wantBody != "" && body != s.wantBody) {
			t.Fatalf("%s %s = %d %q, want %d %q", s.method, s.path, code, body, s.wantCode, s.wantBody)
		}
	}
}

func TestWarmingUp(t *testing.T) {
	a := &app{}
	a.warming.Store(true)
	h := a.handler()
	if code, body := get(t, h, "GET", "/healthz"); code != 503 || body != "starting\n" {
		t.Fatalf("while warming: %d %q, want 503 \"starting\"", code, body)
	}
	a.warming.Store(false)
	if code, body := get(t, h, "GET", "/healthz"); code != 200 || body != "ok\n" {
		t.Fatalf("once warm: %d %q, want 200 \"ok\"", code, body)
	}
}

func TestBadFlag(t *testing.T) {
	var stderr strings.Builder
	if code := run([]string{"-no-such-flag"}, func(string) string { return "" }, &stderr); code != 2 {
		t.Fatalf("exit code %d, want 2", code)
	}
}

func TestWriteFile(t *testing.T) {
	name := filepath.Join(t.TempDir(), "out.txt")
	var stderr strings.Builder
	if code := run([]string{"-write-file", name, "-content", "changed\n"}, func(string) string { return "" }, &stderr); code != 0 {
		t.Fatalf("exit code %d: %s", code, stderr.String())
	}
	b, err := os.ReadFile(name)
	if err != nil || string(b) != "changed\n" {
		t.Fatalf("file = %q, %v", b, err)
	}
	missing := filepath.Join(t.TempDir(), "no", "such", "dir", "x")
	if code := run([]string{"-write-file", missing}, func(string) string { return "" }, &stderr); code != 1 {
		t.Fatalf("write into a missing directory: exit code %d, want 1", code)
	}
}

func TestListensOnHostAndPort(t *testing.T) {
	// Find a free loopback port, then let the app listen on it with HOST set.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
	ln.Close()
	env := map[string]string{"PORT": port, "HOST": "127.0.0.1"}
	var mu sync.Mutex
	var stderr strings.Builder
	done := make(chan int, 1)
	go func() {
		done <- run(nil, func(k string) string { return env[k] }, lockedWriter{&mu, &stderr})
	}()
	url := "http://" + net.JoinHostPort("127.0.0.1", port) + "/healthz"
	var resp *http.Response
	for i := 0; i < 100; i++ {
		if resp, err = http.Get(url); err == nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s = %d", url, resp.StatusCode)
	}
	if err := syscall.Kill(os.Getpid(), syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	select {
	case code := <-done:
		if code != 0 {
			mu.Lock()
			defer mu.Unlock()
			t.Fatalf("exit code %d: %s", code, stderr.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("app did not stop on SIGINT")
	}
	mu.Lock()
	defer mu.Unlock()
	if want := "listening on 127.0.0.1:" + port; !strings.Contains(stderr.String(), want) {
		t.Errorf("log %q lacks %q", stderr.String(), want)
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// TestGRPCHealthOnTheSamePort: with -grpc-health one listener serves
// HTTP/1.1 and gRPC, and the gRPC health status follows /healthz.
func TestGRPCHealthOnTheSamePort(t *testing.T) {
	a := &app{}
	a.enableGRPCHealth()
	srv := a.server()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	defer func() {
		a.stopGRPC()
		srv.Close()
		<-served
	}()
	addr := ln.Addr().String()

	cc, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	hc := healthpb.NewHealthClient(cc)
	expect := func(want healthpb.HealthCheckResponse_ServingStatus, wantHTTP int) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		resp, err := hc.Check(ctx, &healthpb.HealthCheckRequest{})
		if err != nil {
			t.Fatalf("Check: %v", err)
		}
		if resp.GetStatus() != want {
			t.Fatalf("Check = %s, want %s", resp.GetStatus(), want)
		}
		r, err := http.Get("http://" + addr + "/healthz")
		if err != nil {
			t.Fatal(err)
		}
		r.Body.Close()
		if r.StatusCode != wantHTTP || r.ProtoMajor != 1 {
			t.Fatalf("GET /healthz = %d over HTTP/%d, want %d over HTTP/1", r.StatusCode, r.ProtoMajor, wantHTTP)
		}
	}
	post := func(path string) {
		t.Helper()
		r, err := http.Post("http://"+addr+path, "text/plain", nil)
		if err != nil {
			t.Fatal(err)
		}
		r.Body.Close()
		if r.StatusCode != http.StatusOK {
			t.Fatalf("POST %s = %d", path, r.StatusCode)
		}
	}
	expect(healthpb.HealthCheckResponse_SERVING, 200)
	post("/fail")
	expect(healthpb.HealthCheckResponse_NOT_SERVING, 500)
	post("/recover")
	expect(healthpb.HealthCheckResponse_SERVING, 200)
	a.setWarming(true)
	expect(healthpb.HealthCheckResponse_NOT_SERVING, 503)
	a.setWarming(false)
	expect(healthpb.HealthCheckResponse_SERVING, 200)
}

func TestSlowHoldsTheRequest(t *testing.T) {
	a := &app{instance: "web-1"}
	h := a.handler()
	start := time.Now()
	code, body := get(t, h, "GET", "/slow?ms=50")
	if code != http.StatusOK || body != "web-1 slept 50ms\n" {
		t.Fatalf("GET /slow?ms=50 = %d %q", code, body)
	}
	if took := time.Since(start); took < 50*time.Millisecond {
		t.Fatalf("answered after %v, before the 50ms it was asked to hold", took)
	}
	for _, q := range []string{"", "ms=-1", "ms=x", "ms=60001"} {
		if code, _ := get(t, h, "GET", "/slow?"+q); code != http.StatusBadRequest {
			t.Errorf("GET /slow?%s = %d, want 400", q, code)
		}
	}
}

func TestMetricsCountErrors(t *testing.T) {
	a := &app{version: "test"}
	srv := httptest.NewServer(a.handler())
	defer srv.Close()
	get := func(path string) string {
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	get("/")
	get("/healthz")
	a.erring.Store(true)
	if got := get("/healthz"); got != "ok\n" {
		t.Fatalf("/healthz while erring: %q", got)
	}
	get("/")
	get("/slow?ms=1")
	m := get("/metrics")
	if !strings.Contains(m, "sampleapp_requests_total 5\n") || !strings.Contains(m, "sampleapp_errors_total 2\n") {
		t.Fatalf("metrics:\n%s", m)
	}
}

func TestWriteEndpointOnlyWhenAllowed(t *testing.T) {
	path := filepath.Join(t.TempDir(), "drift.txt")
	closed := &app{logger: log.New(io.Discard, "", 0)}
	rec := httptest.NewRecorder()
	closed.handler().ServeHTTP(rec, httptest.NewRequest("POST", "/write?path="+path, strings.NewReader("x")))
	if rec.Code == http.StatusOK {
		t.Fatalf("POST /write without -allow-writes: %d", rec.Code)
	}
	open := &app{writes: true, logger: log.New(io.Discard, "", 0)}
	rec = httptest.NewRecorder()
	open.handler().ServeHTTP(rec, httptest.NewRequest("POST", "/write?path="+path, strings.NewReader("changed")))
	if rec.Code != http.StatusOK {
		t.Fatalf("POST /write: %d %s", rec.Code, rec.Body)
	}
	if b, err := os.ReadFile(path); err != nil || string(b) != "changed" {
		t.Fatalf("file holds %q, %v", b, err)
	}
	rec = httptest.NewRecorder()
	open.handler().ServeHTTP(rec, httptest.NewRequest("POST", "/write?path="+path, strings.NewReader(strings.Repeat("x", maxWrite+1))))
	if rec.Code != http.StatusRequestEntityTooLarge {
		t.Fatalf("POST /write of more than %d bytes: %d", maxWrite, rec.Code)
	}
}
