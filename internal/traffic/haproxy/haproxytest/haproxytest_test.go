package haproxytest_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/immutd/immutd/internal/traffic/haproxy/haproxytest"
)

// get fetches http://addr/ and returns the body.
func get(t *testing.T, addr string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Close = true
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%d %s", resp.StatusCode, b)
}

func server(t *testing.T, name string) *httptest.Server {
	t.Helper()
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, name) }))
	t.Cleanup(s.Close)
	return s
}

// A started haproxy serves its static servers through the frontend of each
// backend; a reload keeps the configuration, drops runtime-added servers
// and changes the PID, and the process before it goes away.
func TestStartAndReload(t *testing.T) {
	op, other := server(t, "op"), server(t, "other")
	h := haproxytest.Start(t, haproxytest.Options{Backends: []haproxytest.Backend{
		{Name: "web", Servers: []haproxytest.Server{{Name: "op", Addr: op.Listener.Addr().String()}}},
		{Name: "api", Balance: "leastconn", Servers: []haproxytest.Server{{Name: "other", Addr: other.Listener.Addr().String()}}},
	}})
	if h.Addr != h.Frontends["web"] || len(h.Frontends) != 2 {
		t.Fatalf("Addr %s, Frontends %v", h.Addr, h.Frontends)
	}
	if got := get(t, h.Addr); got != "200 op" {
		t.Fatalf("web frontend: %s", got)
	}
	if got := get(t, h.Frontends["api"]); got != "200 other" {
		t.Fatalf("api frontend: %s", got)
	}
	if out, err := h.Command("add server web/dyn " + other.Listener.Addr().String()); err != nil || !strings.Contains(out, "New server registered") {
		t.Fatalf("add server: %q %v", out, err)
	}
	before := h.PID()
	h.Reload(t)
	if h.PID() == before {
		t.Fatalf("PID %d unchanged by Reload", before)
	}
	state, err := h.Command("show servers state web")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(state, " op ") || strings.Contains(state, " dyn ") {
		t.Fatalf("after reload, want op and no dyn:\n%s", state)
	}
	for range 4 {
		if got := get(t, h.Addr); got != "200 op" {
			t.Fatalf("web frontend after reload: %s", got)
		}
	}
	h.Reload(t) // again, from the reloaded process
	if got := get(t, h.Addr); got != "200 op" {
		t.Fatalf("web frontend after second reload: %s", got)
	}
}
