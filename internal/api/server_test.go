package api

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/immutd/immutd/internal/state"
)

// fakeBackend records what the server asked of it.
type fakeBackend struct {
	token   string
	drained []string
	paused  []string
	ready   error
}

func (f *fakeBackend) Status(context.Context) Status {
	return Status{Node: "n1", Fleets: []Fleet{{Name: "web"}}}
}
func (f *fakeBackend) ConsistentStatus(context.Context) (Status, error) {
	return Status{}, errors.New("no leader")
}
func (f *fakeBackend) Events(context.Context, uint64, string, int) []state.Event { return nil }
func (f *fakeBackend) Drain(_ context.Context, fleet string) error {
	f.drained = append(f.drained, fleet)
	return nil
}
func (f *fakeBackend) Resolve(context.Context, string) error      { return nil }
func (f *fakeBackend) Retry(context.Context, string) error        { return nil }
func (f *fakeBackend) Members(context.Context) ([]Member, error)  { return nil, nil }
func (f *fakeBackend) JoinVia(context.Context, string) error      { return nil }
func (f *fakeBackend) Leave(context.Context) error                { return nil }
func (f *fakeBackend) RemoveMember(context.Context, string) error { return nil }
func (f *fakeBackend) Ready() error                               { return f.ready }
func (f *fakeBackend) Plan(context.Context, string) (Plan, error) { return Plan{}, nil }
func (f *fakeBackend) Explain(_ context.Context, id string) (Explanation, error) {
	return Explanation{}, fmt.Errorf("instance %s: %w", id, ErrNotFound)
}
func (f *fakeBackend) Pause(_ context.Context, req PauseRequest) ([]string, error) {
	f.paused = append(f.paused, req.Reason)
	return []string{"p1"}, nil
}
func (f *fakeBackend) Unpause(context.Context, UnpauseRequest) ([]string, error) { return nil, nil }
func (f *fakeBackend) Rollouts(context.Context, string) ([]Rollout, error)       { return nil, nil }
func (f *fakeBackend) RolloutStep(context.Context, string, RolloutRequest) error { return nil }
func (f *fakeBackend) Token() string                                             { return f.token }
func (f *fakeBackend) TokenFile() string                                         { return "/data/api-token" }

// call sends a request with auth as its Authorization header (none when
// empty) and returns the status.
func call(t *testing.T, method, url, auth string) int {
	t.Helper()
	req, _ := http.NewRequest(method, url, nil)
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func TestStateChangesNeedTheToken(t *testing.T) {
	b := &fakeBackend{token: "s3cret-token-0123456789"}
	srv := httptest.NewServer(New(b, prometheus.NewRegistry(), zap.NewNop()).Handler())
	defer srv.Close()
	post := func(path, auth string) int { return call(t, http.MethodPost, srv.URL+path, auth) }
	for _, path := range []string{"/v1/fleets/web/drain", "/v1/fleets/web/resolve", "/v1/cluster/leave", "/v1/cluster/join?addr=x", "/v1/cluster/remove?node=x"} {
		if code := post(path, ""); code != http.StatusUnauthorized {
			t.Errorf("%s without token: %d", path, code)
		}
		if code := post(path, "Bearer wrong"); code != http.StatusUnauthorized {
			t.Errorf("%s with a wrong token: %d", path, code)
		}
	}
	if len(b.drained) != 0 {
		t.Fatalf("drained without a token: %v", b.drained)
	}
	// A backend without a token refuses every change, even one that sends
	// an empty bearer token.
	b.token = ""
	if code := post("/v1/fleets/web/drain", "Bearer "); code != http.StatusUnauthorized || len(b.drained) != 0 {
		t.Fatalf("drain against an empty token: %d %v", code, b.drained)
	}
	b.token = "s3cret-token-0123456789"
	if code := post("/v1/fleets/web/drain", "Bearer s3cret-token-0123456789"); code != http.StatusOK || len(b.drained) != 1 {
		t.Fatalf("drain with the token: %d %v", code, b.drained)
	}
	// Reads need no token.
	resp, err := http.Get(srv.URL + "/v1/status")
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("status: %v %v", resp, err)
	}
	resp.Body.Close()
	resp, _ = http.Get(srv.URL + "/v1/status?consistent")
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("consistent read without a leader: %d", resp.StatusCode)
	}
	resp.Body.Close()
}

func TestReadyz(t *testing.T) {
	b := &fakeBackend{ready: errors.New("no raft leader")}
	srv := httptest.NewServer(New(b, prometheus.NewRegistry(), zap.NewNop()).Handler())
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	body := make([]byte, 100)
	n, _ := resp.Body.Read(body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(string(body[:n]), "no raft leader") {
		t.Fatalf("readyz: %d %q", resp.StatusCode, body[:n])
	}
	b.ready = nil
	resp, _ = http.Get(srv.URL + "/readyz")
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("readyz when ready: %d", resp.StatusCode)
	}
}

// Go's profiles show the agent's internals and cost CPU: they need the
// token too.
func TestProfilesNeedTheToken(t *testing.T) {
	b := &fakeBackend{token: "s3cret-token-0123456789"}
	srv := httptest.NewServer(New(b, prometheus.NewRegistry(), zap.NewNop()).Handler())
	defer srv.Close()
	get := func(path, auth string) int { return call(t, http.MethodGet, srv.URL+path, auth) }
	for _, path := range []string{"/debug/pprof/", "/debug/pprof/heap", "/debug/pprof/goroutine?debug=1", "/debug/pprof/profile?seconds=1", "/debug/pprof/trace?seconds=1"} {
		if code := get(path, ""); code != http.StatusUnauthorized {
			t.Errorf("%s without token: %d", path, code)
		}
	}
	for _, path := range []string{"/debug/pprof/", "/debug/pprof/heap", "/debug/pprof/goroutine?debug=1"} {
		if code := get(path, "Bearer s3cret-token-0123456789"); code != http.StatusOK {
			t.Errorf("%s with the token: %d", path, code)
		}
	}
}
