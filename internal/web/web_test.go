package web

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/immutd/immutd/internal/api"
	"github.com/immutd/immutd/internal/state"
)

type fakeSource struct {
	st  api.Status
	evs []state.Event
}

func (f fakeSource) Status(context.Context) api.Status { return f.st }
func (f fakeSource) Events(_ context.Context, after uint64, fleet string, limit int) []state.Event {
	var out []state.Event
	for _, ev := range f.evs {
		if ev.Seq > after && (fleet == "" || ev.Fleet == fleet) {
			out = append(out, ev)
		}
	}
	if len(out) > limit {
		out = out[len(out)-limit:]
	}
	return out
}

func source() fakeSource {
	now := time.Now()
	return fakeSource{
		st: api.Status{Node: "n1", IsLeader: true, Leader: "n1", Config: api.ConfigStatus{OK: true, Fleets: 2},
			Fleets: []api.Fleet{
				{Name: "web", Provider: "local", Desired: 2, States: map[string]int{"healthy": 1, "unhealthy": 1},
					Blocked: []api.Block{{Cause: "launch_backoff", Detail: "exec: no such file"}},
					Instances: []api.Instance{
						{ID: "web-a", Fleet: "web", State: "healthy", CreatedAt: now.Add(-5 * time.Minute), HealthSince: now.Add(-4 * time.Minute), UpToDate: true},
						{ID: "web-b", Fleet: "web", State: "unhealthy", CreatedAt: now.Add(-time.Minute), FailingOn: []string{"n1"},
							Evidence: []string{`GET /healthz: status 500 <script>alert(1)</script>`}},
					}},
				{Name: "api", Provider: "docker", Desired: 1, States: map[string]int{"healthy": 1},
					Instances: []api.Instance{{ID: "api-a", Fleet: "api", State: "healthy", UpToDate: true}}},
			}},
		evs: []state.Event{
			{Seq: 1, Time: now.Add(-time.Minute), Fleet: "web", InstanceID: "web-b", Action: "launched", Reason: "scale_up"},
			{Seq: 2, Time: now, Fleet: "api", InstanceID: "api-a", Action: "launched", Reason: "scale_up"},
		},
	}
}

func get(t *testing.T, h http.Handler, target string) (int, http.Header, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", target, nil))
	b, _ := io.ReadAll(rec.Result().Body)
	return rec.Code, rec.Header(), string(b)
}

func TestPageShowsFleetsInstancesAndEvents(t *testing.T) {
	h := Handler(source())
	code, hdr, body := get(t, h, "/ui/")
	if code != 200 {
		t.Fatalf("GET /ui/: %d %s", code, body)
	}
	if csp := hdr.Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'none'") || !strings.Contains(csp, "script-src 'self'") {
		t.Errorf("CSP %q does not keep the page to itself", csp)
	}
	for _, want := range []string{`data-fleet="web"`, `data-fleet="api"`, `1 / 2`, `launch_backoff`, `exec: no such file`,
		`data-instance="web-b"`, `failing on n1`, `<svg class="timeline"`, `data-seq="2"`, `/ui/static/live.js`, `2 fleets`} {
		if !strings.Contains(body, want) {
			t.Errorf("page lacks %q", want)
		}
	}
	if strings.Contains(body, "<script>alert(1)</script>") || !strings.Contains(body, "&lt;script&gt;alert(1)&lt;/script&gt;") {
		t.Error("evidence is not escaped")
	}
	// The newest event comes first.
	if strings.Index(body, `data-seq="2"`) > strings.Index(body, `data-seq="1"`) {
		t.Error("events are not newest first")
	}
}

func TestFiltersAndLivePart(t *testing.T) {
	h := Handler(source())
	_, _, body := get(t, h, "/ui/live?fleet=web")
	if strings.Contains(body, `data-fleet="api"`) || !strings.Contains(body, `data-fleet="web"`) || strings.Contains(body, "<html") {
		t.Errorf("live part of fleet web: %s", body)
	}
	if strings.Contains(body, `data-seq="2"`) {
		t.Error("fleet filter kept an event of another fleet")
	}
	_, _, body = get(t, h, "/ui/live?instance=web-a")
	if strings.Contains(body, `data-instance="web-b"`) || !strings.Contains(body, `data-instance="web-a"`) || strings.Contains(body, `data-seq="1"`) {
		t.Errorf("instance filter: %s", body)
	}
	for _, bad := range []string{"/ui/?fleet=%3Cx%3E", "/ui/?events=0", "/ui/?events=501", "/ui/?instance=" + strings.Repeat("a", 129)} {
		if code, _, _ := get(t, h, bad); code != http.StatusBadRequest {
			t.Errorf("GET %s: %d, want 400", bad, code)
		}
	}
	if code, hdr, _ := get(t, h, "/ui/static/live.js"); code != 200 || !strings.Contains(hdr.Get("Content-Type"), "javascript") {
		t.Errorf("live.js: %d %s", code, hdr.Get("Content-Type"))
	}
}
