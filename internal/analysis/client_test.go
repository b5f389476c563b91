package analysis

import (
	"context"
	"errors"
	"math"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestNewClient(t *testing.T) {
	for _, tc := range []struct{ address, endpoint, err string }{
		{"http://127.0.0.1:9090", "http://127.0.0.1:9090/api/v1/query", ""},
		{"https://prom.example.com/", "https://prom.example.com/api/v1/query", ""},
		{"http://[::1]:9090/prometheus/", "http://[::1]:9090/prometheus/api/v1/query", ""},
		{"127.0.0.1:9090", "", `analysis: prometheus address: parse "127.0.0.1:9090": first path segment in URL cannot contain colon`},
		{"prometheus:9090", "", `analysis: prometheus address "prometheus:9090": scheme must be http or https`},
		{"ftp://127.0.0.1", "", `analysis: prometheus address "ftp://127.0.0.1": scheme must be http or https`},
		{"", "", `analysis: prometheus address "": scheme must be http or https`},
		{"http://", "", `analysis: prometheus address "http:": no host`},
		{"http://:9090", "", `analysis: prometheus address "http://:9090": no host`},
		{"http:///api", "", `analysis: prometheus address "http:///api": no host`},
		{"http://127.0.0.1:9090?x=1", "", `analysis: prometheus address "http://127.0.0.1:9090?x=1": must not have a query`},
		{"http://127.0.0.1:9090#x", "", `analysis: prometheus address "http://127.0.0.1:9090#x": must not have a fragment`},
		{"http://u:secret@127.0.0.1:9090?x", "", `analysis: prometheus address "http://u:xxxxx@127.0.0.1:9090?x": must not have a query`},
	} {
		c, err := NewClient(tc.address, nil)
		switch {
		case tc.err != "" && (err == nil || err.Error() != tc.err):
			t.Errorf("NewClient(%q) error = %v\n want %s", tc.address, err, tc.err)
		case tc.err == "" && err != nil:
			t.Errorf("NewClient(%q): %v", tc.address, err)
		case tc.err == "" && c.endpoint != tc.endpoint:
			t.Errorf("NewClient(%q) endpoint = %q, want %q", tc.address, c.endpoint, tc.endpoint)
		}
	}
}

// serve starts a server answering every request with status and body,
// and returns a client of it. It records the last request's form.
func serve(t *testing.T, status int, body string, form *map[string]string) *Client {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet || r.URL.Path != "/api/v1/query" {
			http.Error(w, "wrong request "+r.Method+" "+r.URL.Path, http.StatusTeapot)
			return
		}
		if form != nil {
			*form = map[string]string{"query": r.FormValue("query"), "time": r.FormValue("time")}
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_, _ = w.Write([]byte(body))
	}))
	t.Cleanup(srv.Close)
	c, err := NewClient(srv.URL, srv.Client())
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func query(t *testing.T, c *Client) ([]float64, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return c.Query(ctx, "sum(x)", time.Time{})
}

func TestQueryResults(t *testing.T) {
	inf := math.Inf(1)
	tests := []struct {
		name, body string
		want       []float64
	}{
		{"scalar", `{"status":"success","data":{"resultType":"scalar","result":[1700000000.5,"0.25"]}}`, []float64{0.25}},
		{"empty vector", `{"status":"success","data":{"resultType":"vector","result":[]}}`, []float64{}},
		{"vector sorted by labels", `{"status":"success","data":{"resultType":"vector","result":[
			{"metric":{"job":"b","instance":"x"},"value":[1,"4"]},
			{"metric":{"instance":"y"},"value":[1,"3"]},
			{"metric":{"job":"a","instance":"x"},"value":[1,"2"]},
			{"metric":{"instance":"x"},"value":[1,"1"]},
			{"metric":{},"value":[1,"0"]}
		]}}`, []float64{0, 1, 2, 4, 3}},
		{"special values", `{"status":"success","data":{"resultType":"vector","result":[
			{"metric":{"v":"a"},"value":[1,"NaN"]},
			{"metric":{"v":"b"},"value":[1,"+Inf"]},
			{"metric":{"v":"c"},"value":[1,"-Inf"]},
			{"metric":{"v":"d"},"value":[1,"1e-3"]}
		]}}`, []float64{nan, inf, -inf, 0.001}},
		{"warnings ignored", `{"status":"success","warnings":["w"],"data":{"resultType":"scalar","result":[1,"7"]}}`, []float64{7}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := query(t, serve(t, http.StatusOK, tc.body, nil))
			if err != nil {
				t.Fatal(err)
			}
			if !sameValues(got, tc.want) {
				t.Fatalf("Query = %v, want %v", got, tc.want)
			}
		})
	}
}

func sameValues(a, b []float64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] && !(math.IsNaN(a[i]) && math.IsNaN(b[i])) {
			return false
		}
	}
	return true
}

func TestQueryErrors(t *testing.T) {
	long := strings.Repeat("z", 1000)
	tests := []struct {
		name   string
		status int
		body   string
		want   string
	}{
		{"matrix", 200, `{"status":"success","data":{"resultType":"matrix","result":[]}}`,
			"analysis: prometheus query: result type matrix: want a scalar or an instant vector"},
		{"string", 200, `{"status":"success","data":{"resultType":"string","result":[1,"s"]}}`,
			"analysis: prometheus query: result type string: want a scalar or an instant vector"},
		{"unknown type", 200, `{"status":"success","data":{"resultType":"thing","result":[]}}`,
			`analysis: prometheus query: unknown result type "thing"`},
		{"status error", 200, `{"status":"error","errorType":"execution","error":"query timed out"}`,
			"analysis: prometheus query: status error: execution: query timed out"},
		{"bad_data", 400, `{"status":"error","errorType":"bad_data","error":"1:5: parse error: unexpected \"}\""}`,
			`analysis: prometheus query: HTTP status 400: bad_data: 1:5: parse error: unexpected "}"`},
		{"long error is bounded", 422, `{"status":"error","errorType":"execution","error":"` + long + `"}`,
			"analysis: prometheus query: HTTP status 422: execution: " + strings.Repeat("z", maxErrorText-len("execution: ")-len("…")) + "…"},
		{"non-2xx text", 502, "bad gateway\n",
			"analysis: prometheus query: HTTP status 502: bad gateway"},
		{"non-2xx long text", 503, long,
			"analysis: prometheus query: HTTP status 503: " + strings.Repeat("z", maxErrorText-len("…")) + "…"},
		{"non-2xx empty", 500, "",
			"analysis: prometheus query: HTTP status 500"},
		{"not JSON", 200, "<html>",
			"analysis: prometheus query: decode response: invalid character '<' looking for beginning of value"},
		{"other status", 200, `{"status":"pending"}`,
			`analysis: prometheus query: unexpected status "pending"`},
		{"bad value", 200, `{"status":"success","data":{"resultType":"scalar","result":[1,"one"]}}`,
			`analysis: prometheus query: decode scalar: sample value "one" is not a number`},
		{"bad pair", 200, `{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1]}]}}`,
			`analysis: prometheus query: decode vector: sample has 1 elements, want 2`},
		{"histogram", 200, `{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"histogram":[1,{}]}]}}`,
			`analysis: prometheus query: decode vector: a series has no float value (a native histogram?)`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := query(t, serve(t, tc.status, tc.body, nil))
			if err == nil || err.Error() != tc.want || got != nil {
				t.Fatalf("Query = %v, %v\n want error %s", got, err, tc.want)
			}
		})
	}
}

func TestQueryOversizedBody(t *testing.T) {
	body := `{"status":"success","data":{"resultType":"vector","result":[` +
		strings.Repeat(`{"metric":{},"value":[1,"1"]},`, MaxResponseBytes/28) +
		`{"metric":{},"value":[1,"1"]}]}}`
	_, err := query(t, serve(t, 200, body, nil))
	want := "analysis: prometheus query: response body exceeds 1048576 bytes (1 MiB)"
	if err == nil || err.Error() != want {
		t.Fatalf("Query error = %v, want %s", err, want)
	}
	// Exactly the limit is fine.
	exact := `{"status":"success","data":{"resultType":"scalar","result":[1,"2"]}}`
	exact += strings.Repeat(" ", MaxResponseBytes-len(exact))
	if got, err := query(t, serve(t, 200, exact, nil)); err != nil || !sameValues(got, []float64{2}) {
		t.Fatalf("Query of %d bytes = %v, %v", len(exact), got, err)
	}
}

func TestQueryParameters(t *testing.T) {
	var form map[string]string
	c := serve(t, 200, `{"status":"success","data":{"resultType":"scalar","result":[1,"1"]}}`, &form)
	at := time.Date(2026, 3, 4, 5, 6, 7, 890_000_000, time.FixedZone("x", 3600))
	if _, err := c.Query(context.Background(), `sum(rate(x{a="b"}[1m]))`, at); err != nil {
		t.Fatal(err)
	}
	if form["query"] != `sum(rate(x{a="b"}[1m]))` || form["time"] != "2026-03-04T04:06:07.89Z" {
		t.Fatalf("form = %v", form)
	}
	if _, err := c.Query(context.Background(), "up", time.Time{}); err != nil {
		t.Fatal(err)
	}
	if form["time"] != "" {
		t.Fatalf("zero time sent time=%q", form["time"])
	}
}

func TestQueryContext(t *testing.T) {
	arrived := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(arrived)
		<-r.Context().Done() // until the client gives up
	}))
	t.Cleanup(srv.Close)
	c, err := NewClient(srv.URL, srv.Client())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	go func() { <-arrived; cancel() }()
	_, err = c.Query(ctx, "up", time.Time{})
	if !errors.Is(err, context.Canceled) || !strings.HasPrefix(err.Error(), "analysis: prometheus query: ") {
		t.Fatalf("Query error = %v, want a wrapped context.Canceled", err)
	}

	// An already cancelled context sends nothing.
	_, err = c.Query(ctx, "up", time.Time{})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Query error = %v, want context.Canceled", err)
	}
}

func TestQueryConnectionRefused(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	address := srv.URL
	srv.Close() // nothing listens there any more
	c, err := NewClient(address, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := query(t, c); err == nil || !strings.HasPrefix(err.Error(), "analysis: prometheus query: ") {
		t.Fatalf("Query error = %v", err)
	}
}
