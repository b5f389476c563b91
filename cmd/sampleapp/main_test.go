package main

import (
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
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
		{"POST", "/recover", 200, "ok\n"},
		{"GET", "/healthz", 200, "ok\n"},
	}
	for _, s := range steps {
		code, body := get(t, h, s.method, s.path)
		if code != s.wantCode || (s.wantBody != "" && body != s.wantBody) {
			t.Fatalf("%s %s = %d %q, want %d %q", s.method, s.path, code, body, s.wantCode, s.wantBody)
		}
	}
}

func TestBadFlag(t *testing.T) {
	var stderr strings.Builder
	if code := run([]string{"-no-such-flag"}, func(string) string { return "" }, &stderr); code != 2 {
		t.Fatalf("exit code %d, want 2", code)
	}
}
