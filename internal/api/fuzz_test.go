package api

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

// FuzzAPIRequests sends arbitrary methods, paths, queries, bearer
// tokens and bodies to the API: nothing panics, and no state-changing
// call reaches the backend without the right token.
func FuzzAPIRequests(f *testing.F) {
	for _, s := range [][4]string{
		{"POST", "/v1/fleets/web/drain", "Bearer s3cret-token-0123456789", ""},
		{"POST", "/v1/fleets/web/drain", "Bearer wrong", ""},
		{"POST", "/v1/cluster/join?addr=10.0.0.1:7980", "", ""},
		{"GET", "/v1/events?after=18446744073709551615&limit=-1", "", ""},
		{"GET", "/v1/status?consistent", "", ""},
		{"POST", "/v1/cluster/remove?node=%00", "Bearer ", strings.Repeat("x", 9000)},
	} {
		f.Add(s[0], s[1], s[2], s[3])
	}
	f.Fuzz(func(t *testing.T, method, target, auth, body string) {
		if !strings.HasPrefix(target, "/") {
			target = "/" + target
		}
		b := &fakeBackend{token: "s3cret-token-0123456789"}
		h := New(b, prometheus.NewRegistry(), zap.NewNop()).Handler()
		req, err := http.NewRequest(method, "http://immutd"+target, strings.NewReader(body))
		if err != nil {
			return
		}
		req.Header.Set("Authorization", auth)
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		if len(b.drained) > 0 && auth != "Bearer s3cret-token-0123456789" {
			t.Fatalf("%s %s drained %v with Authorization %q", method, target, b.drained, auth)
		}
		if w.Code < 100 || w.Code > 599 {
			t.Fatalf("status %d", w.Code)
		}
	})
}
