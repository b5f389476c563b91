package probe

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/immutd/immutd/internal/state"
)

// Check kinds this package runs.
const (
	KindHTTP = "http"
	KindTCP  = "tcp"
)

const (
	// maxBody is how much of a response body is read (and discarded).
	// Health endpoints answer with a few bytes; a longer body costs the
	// keep-alive connection, nothing else.
	maxBody = 16 << 10
	// maxDetail bounds the length of a result's Detail.
	maxDetail = 200
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

// normalize fills what a check needs to run that a caller may have left
// zero. config applies the documented defaults; this only guards against
// checks that skipped it (a zero interval would spin, a zero threshold
// would never hold).
func normalize(c state.Check) state.Check {
	if c.Interval <= 0 {
		c.Interval = 2 * time.Second
	}
	if c.Timeout <= 0 {
		c.Timeout = min(time.Second, c.Interval)
	}
	c.HealthyThreshold = max(c.HealthyThreshold, 1)
	c.UnhealthyThreshold = max(c.UnhealthyThreshold, 1)
	if c.Kind == KindHTTP {
		if c.Path == "" || c.Path[0] != '/' {
			c.Path = "/" + c.Path
		}
		if len(c.ExpectStatus) == 0 {
			c.ExpectStatus = []int{http.StatusOK}
		} else {
			c.ExpectStatus = slices.Clone(c.ExpectStatus)
		}
	}
	return c
}

func checksEqual(a, b []state.Check) bool {
	return slices.EqualFunc(a, b, func(x, y state.Check) bool {
		return x.Name == y.Name && x.Kind == y.Kind && x.Path == y.Path &&
			slices.Equal(x.ExpectStatus, y.ExpectStatus) &&
			x.Interval == y.Interval && x.Timeout == y.Timeout &&
			x.HealthyThreshold == y.HealthyThreshold &&
			x.UnhealthyThreshold == y.UnhealthyThreshold &&
			x.StartupTimeout == y.StartupTimeout
	})
}

// newHTTPClient returns the client all HTTP probes share. One transport
// keeps one idle keep-alive connection per instance and check, so steady
// probing does not reconnect: the per-host idle limit is the worker
// count (no more requests than that are ever in flight to one host), there
// is no global idle limit, and idle connections live longer than any
// sensible probe interval. Probes never go through a proxy and never
// follow redirects: a 3xx is judged by expect_status like any status.
func newHTTPClient(workers int, dialer *net.Dialer) (*http.Client, *http.Transport) {
	tr := &http.Transport{
		Proxy:                  nil,
		DialContext:            dialer.DialContext,
		MaxIdleConns:           0,
		MaxIdleConnsPerHost:    workers,
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
	return c, tr
}

// runHTTP performs one HTTP check. ctx carries the check's timeout.
func (p *Prober) runHTTP(ctx context.Context, j *job) (bool, string) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, j.url, nil)
	if err != nil {
		return false, clip("bad request: " + err.Error())
	}
	req.Header.Set("User-Agent", userAgent)
	resp, err := p.client.Do(req)
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

// runTCP performs one TCP check: connect, then close.
func (p *Prober) runTCP(ctx context.Context, j *job) (bool, string) {
	conn, err := p.dialer.DialContext(ctx, "tcp", j.address)
	if err != nil {
		return false, j.describe(ctx, err)
	}
	conn.Close()
	return true, "connected"
}

// describe turns a probe error into a short Detail.
func (j *job) describe(ctx context.Context, err error) string {
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return j.timeoutDetail
	}
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return errno.Error()
	}
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return "connection closed by peer"
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Err != nil {
		err = oe.Err
	}
	return clip(err.Error())
}

func clip(s string) string {
	if len(s) <= maxDetail {
		return s
	}
	n := maxDetail
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "..."
}

// operation describes what a check does, for evidence:
// "GET http://127.0.0.1:4012/healthz" or "dial 127.0.0.1:4012".
func operation(c state.Check, address string) string {
	if c.Kind == KindHTTP {
		return "GET " + httpURL(address, c.Path)
	}
	return "dial " + address
}

func httpURL(address, path string) string { return "http://" + address + path }

func timeoutDetail(d time.Duration) string { return fmt.Sprintf("timeout after %s", d) }
