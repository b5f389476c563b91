package probe

import (
	"context"
	"errors"
	"io"
	"net/http"
	"slices"
	"strconv"
	"time"

	"github.com/immutd/immutd/internal/state"
)

// KindHTTP is a GET of the check's path, passing on an expected status.
const KindHTTP = "http"

const (
	// maxBody is how much of a response body is read (and discarded).
	// Health endpoints answer with a few bytes; a longer body costs the
	// keep-alive connection, nothing else.
	maxBody   = 16 << 10
	userAgent = "immutd-probe"
)

// statusDetails holds "status NNN" for every code, so a result does not
// allocate its Detail.
var statusDetails = func() []string {
	s := make([]string, 600)
	for i := range s {
		s[i] = "status " + strconv.Itoa(i)
	}
	return s
}()

func statusDetail(code int) string {
	if code >= 0 && code < len(statusDetails) {
		return statusDetails[code]
	}
	return "status " + strconv.Itoa(code)
}

// httpChecker runs http checks. All its probes share one client.
type httpChecker struct {
	client    *http.Client
	transport *http.Transport
}

// newHTTPChecker returns the checker whose client all HTTP probes share.
// One transport keeps one idle keep-alive connection per instance and
// check, so steady probing does not reconnect: the per-host idle limit is
// the worker count (no more requests than that are ever in flight to one
// host), there is no global idle limit, and idle connections live longer
// than any sensible probe interval. Probes never go through a proxy and
// never follow redirects: a 3xx is judged by expect_status like any
// status.
func newHTTPChecker(env checkEnv) *httpChecker {
	tr := &http.Transport{
		Proxy:                  nil,
		DialContext:            env.dialer.DialContext,
		MaxIdleConns:           0,
		MaxIdleConnsPerHost:    env.workers,
		IdleConnTimeout:        2 * time.Minute,
		DisableCompression:     true,
		MaxResponseHeaderBytes: 64 << 10,
		ForceAttemptHTTP2:      false,
	}
	c := &http.Client{
		Transport: tr,
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}
	return &httpChecker{client: c, transport: tr}
}

func (h *httpChecker) normalize(c state.Check) state.Check {
	if c.Path == "" || c.Path[0] != '/' {
		c.Path = "/" + c.Path
	}
	if len(c.ExpectStatus) == 0 {
		c.ExpectStatus = []int{http.StatusOK}
	} else {
		c.ExpectStatus = slices.Clone(c.ExpectStatus)
	}
	return c
}

func (h *httpChecker) describe(c state.Check, address string) string {
	return "GET " + httpURL(address, c.Path)
}

func httpURL(address, path string) string { return "http://" + address + path }

// run performs one HTTP check.
func (h *httpChecker) run(ctx context.Context, j *job) (bool, string) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, httpURL(j.address, j.check.Path), nil)
	if err != nil {
		return false, clip("bad request: " + err.Error())
	}
	req.Header.Set("User-Agent", userAgent)
	resp, err := h.client.Do(req)
	if err != nil {
		return false, j.describe(ctx, err)
	}
	_, err = io.CopyN(io.Discard, resp.Body, maxBody)
	resp.Body.Close()
	detail := statusDetail(resp.StatusCode)
	if err != nil && !errors.Is(err, io.EOF) {
		return false, detail + "; reading body: " + j.describe(ctx, err)
	}
	return slices.Contains(j.check.ExpectStatus, resp.StatusCode), detail
}

func (h *httpChecker) closeIdle() { h.transport.CloseIdleConnections() }
