package api

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

// snapBackend serves snapshots.
type snapBackend struct {
	fakeBackend
	file  []byte
	err   error
	taken int
}

func (b *snapBackend) Snapshot(context.Context) (*SnapshotStream, error) {
	if b.err != nil {
		return nil, b.err
	}
	b.taken++
	return &SnapshotStream{Size: int64(len(b.file)), Body: io.NopCloser(bytes.NewReader(b.file))}, nil
}

// TestSnapshotNeedsTheToken: the snapshot holds the whole state, so
// unlike other reads it is refused without the right token, before the
// backend takes one.
func TestSnapshotNeedsTheToken(t *testing.T) {
	b := &snapBackend{fakeBackend: fakeBackend{token: "s3cret-token-0123456789"}, file: []byte("IMMUTD-SNAPSHOT\nthe state\n")}
	srv := httptest.NewServer(New(b, prometheus.NewRegistry(), zap.NewNop()).Handler())
	defer srv.Close()
	get := func(auth string) (*http.Response, string) {
		req, _ := http.NewRequest(http.MethodGet, srv.URL+"/v1/snapshot", nil)
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp, string(body)
	}
	for _, auth := range []string{"", "Bearer wrong", "Bearer ", "Basic s3cret-token-0123456789", "s3cret-token-0123456789"} {
		resp, body := get(auth)
		if resp.StatusCode != http.StatusUnauthorized || !strings.Contains(body, "needs the API token") || strings.Contains(body, "the state") {
			t.Errorf("Authorization %q: %d %s", auth, resp.StatusCode, body)
		}
	}
	if b.taken != 0 {
		t.Fatalf("snapshot taken %d times without the token", b.taken)
	}
	resp, body := get("Bearer s3cret-token-0123456789")
	if resp.StatusCode != http.StatusOK || body != string(b.file) || resp.Header.Get("Cache-Control") != "no-store" ||
		resp.ContentLength != int64(len(b.file)) {
		t.Fatalf("with the token: %d %q %v", resp.StatusCode, body, resp.Header)
	}

	// The client: without a token it gets the refusal, with it the file.
	var out bytes.Buffer
	if _, err := NewClient(srv.URL).Snapshot(context.Background(), &out); err == nil || !strings.Contains(err.Error(), "401") || out.Len() != 0 {
		t.Fatalf("client without token: %v, %d bytes", err, out.Len())
	}
	n, err := NewClient(srv.URL).WithToken("s3cret-token-0123456789").Snapshot(context.Background(), &out)
	if err != nil || n != int64(len(b.file)) || out.String() != string(b.file) {
		t.Fatalf("client with token: %d %v %q", n, err, out.String())
	}

	// No leader: 503 with the reason.
	b.err = fmt.Errorf("no leader: %w", ErrUnavailable)
	if resp, body := get("Bearer s3cret-token-0123456789"); resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(body, "no leader") {
		t.Fatalf("without a leader: %d %s", resp.StatusCode, body)
	}
}

func TestSnapshotOfABackendWithoutSnapshots(t *testing.T) {
	b := &fakeBackend{token: "s3cret-token-0123456789"}
	srv := httptest.NewServer(New(b, prometheus.NewRegistry(), zap.NewNop()).Handler())
	defer srv.Close()
	_, err := NewClient(srv.URL).WithToken(b.token).Snapshot(context.Background(), io.Discard)
	if err == nil || !strings.Contains(err.Error(), "501") {
		t.Fatalf("snapshot of a backend without snapshots: %v", err)
	}
}
