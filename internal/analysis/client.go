package analysis

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
)

const (
	// MaxResponseBytes bounds the body of a Prometheus response.
	MaxResponseBytes = 1 << 20
	// maxErrorText bounds the text of Prometheus's own errors in ours.
	maxErrorText = 300
	// defaultTimeout is the timeout of the HTTP client NewClient makes
	// when it is given none.
	defaultTimeout = 30 * time.Second
)

// Client queries one Prometheus server's HTTP API (GET /api/v1/query).
// It is safe for concurrent use when its http.Client is.
type Client struct {
	endpoint string // the query URL, without parameters
	hc       *http.Client
}

// NewClient returns a client of the Prometheus server at address, an http
// or https URL with a host and optionally a path prefix
// ("http://127.0.0.1:9090", "https://prom.example.com/prometheus"). A nil
// hc means an http.Client of its own with a 30s timeout; ctx deadlines
// bound each query in any case.
func NewClient(address string, hc *http.Client) (*Client, error) {
	u, err := url.Parse(address)
	if err != nil {
		return nil, fmt.Errorf("analysis: prometheus address: %w", err)
	}
	var problem string
	switch {
	case u.Scheme != "http" && u.Scheme != "https":
		problem = "scheme must be http or https"
	case u.Host == "" || u.Hostname() == "":
		problem = "no host"
	case u.RawQuery != "" || u.ForceQuery:
		problem = "must not have a query"
	case u.Fragment != "":
		problem = "must not have a fragment"
	}
	if problem != "" {
		return nil, fmt.Errorf("analysis: prometheus address %q: %s", u.Redacted(), problem)
	}
	if hc == nil {
		hc = &http.Client{Timeout: defaultTimeout}
	}
	u.Path = strings.TrimSuffix(u.Path, "/") + "/api/v1/query"
	u.RawPath = ""
	return &Client{endpoint: u.String(), hc: hc}, nil
}

// Query runs the instant query promql at time at (the zero time means the
// server's own now) and returns the sample values: one for a scalar, one
// per series for a vector, sorted by the series' label sets so that the
// order does not depend on the server, none for an empty vector. Matrix
// and string results are errors, as are a non-2xx answer and an answer
// with status "error"; those errors carry Prometheus's errorType and
// error. Values may be NaN or ±Inf.
func (c *Client) Query(ctx context.Context, promql string, at time.Time) ([]float64, error) {
	body, status, err := c.get(ctx, promql, at)
	if err != nil {
		return nil, fmt.Errorf("analysis: prometheus query: %w", err)
	}
	values, err := decodeResponse(body, status)
	if err != nil {
		return nil, fmt.Errorf("analysis: prometheus query: %w", err)
	}
	return values, nil
}

// get sends the query and reads the answer's body, at most
// MaxResponseBytes of it.
func (c *Client) get(ctx context.Context, promql string, at time.Time) ([]byte, int, error) {
	params := url.Values{"query": {promql}}
	if !at.IsZero() {
		params.Set("time", at.UTC().Format(time.RFC3339Nano))
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.endpoint+"?"+params.Encode(), nil)
	if err != nil {
		return nil, 0, err
	}
	req.Header.Set("Accept", "application/json")
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, 0, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, MaxResponseBytes+1))
	if err != nil {
		return nil, 0, fmt.Errorf("read response: %w", err)
	}
	if len(body) > MaxResponseBytes {
		return nil, 0, fmt.Errorf("response body exceeds %d bytes (1 MiB)", MaxResponseBytes)
	}
	return body, resp.StatusCode, nil
}

// apiResponse is the envelope of every answer of the HTTP API.
type apiResponse struct {
	Status    string `json:"status"`
	ErrorType string `json:"errorType"`
	Error     string `json:"error"`
	Data      struct {
		ResultType string          `json:"resultType"`
		Result     json.RawMessage `json:"result"`
	} `json:"data"`
}

func decodeResponse(body []byte, status int) ([]float64, error) {
	var r apiResponse
	jsonErr := json.Unmarshal(body, &r)
	switch {
	case status < 200 || status > 299:
		return nil, statusError(status, r, jsonErr, body)
	case jsonErr != nil:
		return nil, fmt.Errorf("decode response: %w", jsonErr)
	case r.Status == "error":
		return nil, fmt.Errorf("status error: %s", prometheusError(r))
	case r.Status != "success":
		return nil, fmt.Errorf("unexpected status %q", clipTo(r.Status, maxErrorText))
	}
	switch r.Data.ResultType {
	case "scalar":
		v, err := decodeSample(r.Data.Result)
		if err != nil {
			return nil, fmt.Errorf("decode scalar: %w", err)
		}
		return []float64{v}, nil
	case "vector":
		return decodeVector(r.Data.Result)
	case "matrix", "string":
		return nil, fmt.Errorf("result type %s: want a scalar or an instant vector", r.Data.ResultType)
	}
	return nil, fmt.Errorf("unknown result type %q", clipTo(r.Data.ResultType, maxErrorText))
}

func statusError(status int, r apiResponse, jsonErr error, body []byte) error {
	if jsonErr == nil && (r.ErrorType != "" || r.Error != "") {
		return fmt.Errorf("HTTP status %d: %s", status, prometheusError(r))
	}
	text := strings.TrimSpace(string(body))
	if text == "" {
		return fmt.Errorf("HTTP status %d", status)
	}
	return fmt.Errorf("HTTP status %d: %s", status, clipTo(text, maxErrorText))
}

// prometheusError is errorType and error of an answer, bounded.
func prometheusError(r apiResponse) string {
	text := r.ErrorType + ": " + r.Error
	switch {
	case r.ErrorType == "":
		text = r.Error
	case r.Error == "":
		text = r.ErrorType
	}
	return clipTo(text, maxErrorText)
}

// decodeSample decodes a [timestamp, "value"] pair.
func decodeSample(raw json.RawMessage) (float64, error) {
	var pair []json.RawMessage
	if err := json.Unmarshal(raw, &pair); err != nil {
		return 0, err
	}
	if len(pair) != 2 {
		return 0, fmt.Errorf("sample has %d elements, want 2", len(pair))
	}
	var s string
	if err := json.Unmarshal(pair[1], &s); err != nil {
		return 0, fmt.Errorf("sample value: %w", err)
	}
	v, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return 0, fmt.Errorf("sample value %q is not a number", clipTo(s, 40))
	}
	return v, nil
}

type series struct {
	labels []label
	value  float64
}

type label struct{ name, value string }

func decodeVector(raw json.RawMessage) ([]float64, error) {
	var samples []struct {
		Metric map[string]string `json:"metric"`
		Value  json.RawMessage   `json:"value"`
	}
	if err := json.Unmarshal(raw, &samples); err != nil {
		return nil, fmt.Errorf("decode vector: %w", err)
	}
	all := make([]series, 0, len(samples))
	for _, s := range samples {
		if len(s.Value) == 0 {
			return nil, errors.New("decode vector: a series has no float value (a native histogram?)")
		}
		v, err := decodeSample(s.Value)
		if err != nil {
			return nil, fmt.Errorf("decode vector: %w", err)
		}
		all = append(all, series{labels: sortedLabels(s.Metric), value: v})
	}
	slices.SortStableFunc(all, func(a, b series) int { return compareLabels(a.labels, b.labels) })
	values := make([]float64, len(all))
	for i, s := range all {
		values[i] = s.value
	}
	return values, nil
}

func sortedLabels(m map[string]string) []label {
	ls := make([]label, 0, len(m))
	for name, value := range m {
		ls = append(ls, label{name, value})
	}
	slices.SortFunc(ls, func(a, b label) int { return cmp.Compare(a.name, b.name) })
	return ls
}

// compareLabels orders label sets by their sorted (name, value) pairs;
// a set that is a prefix of another comes first.
func compareLabels(a, b []label) int {
	for i := range min(len(a), len(b)) {
		if c := cmp.Compare(a[i].name, b[i].name); c != 0 {
			return c
		}
		if c := cmp.Compare(a[i].value, b[i].value); c != 0 {
			return c
		}
	}
	return cmp.Compare(len(a), len(b))
}
