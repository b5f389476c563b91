package probe

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/immutd/immutd/internal/state"
)

// KindHTTP is a GET of the check's path, passing on an expected status.
const KindHTTP = "http"

const (
	// maxBody is how much of a response body is read (and discarded).
	// Health endpoints answer with a few bytes; a longer body costs the
	// keep-alive connection, nothing else.
	maxBody = 16 << 10
	// maxHeader bounds the status line and headers of a response.
	maxHeader = 64 << 10
	userAgent = "immutd-probe"
	// readBuffer is the read buffer of one connection: a health answer's
	// status line and headers fit; longer lines are read in pieces.
	readBuffer = 1 << 10
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

// httpChecker runs http checks over HTTP/1.1 keep-alive connections that
// it keeps itself, one idle connection per instance (more while one
// instance's checks overlap). A probe runs on its worker's goroutine from
// dial to the last byte, and an idle connection is a socket (a probe
// reads through a pooled 1 KiB buffer): unlike net/http's Transport (two
// goroutines and 8 KiB of buffers per connection), watching an instance
// costs no goroutine and no buffer.
// Probes never go through a proxy and never follow redirects: a 3xx is
// judged by expect_status like any status.
//
// Idle connections are capped (maxIdle, from the open-file limit), so an
// agent watching more instances than it may hold sockets for still
// probes them all: the ones beyond the cap reconnect at each probe.
type httpChecker struct {
	dialer  *net.Dialer
	maxIdle int

	mu    sync.Mutex
	idle  map[string][]*httpConn // by address
	nidle int
}

// httpConn is one connection. budget bounds what one response may send
// (headers and the body read). A probe reads through a buffer from a
// pool: a connection is reused only when its answer left nothing
// buffered, so an idle connection needs none.
type httpConn struct {
	c      net.Conn
	budget int64
}

var readers = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, readBuffer) }}

func (hc *httpConn) Read(p []byte) (int, error) {
	if hc.budget <= 0 {
		return 0, errTooLong
	}
	if int64(len(p)) > hc.budget {
		p = p[:hc.budget]
	}
	n, err := hc.c.Read(p)
	hc.budget -= int64(n)
	return n, err
}

var errTooLong = errors.New("response longer than 80 KiB of headers and body")

// newHTTPChecker returns the checker all HTTP probes share.
func newHTTPChecker(env checkEnv) *httpChecker {
	return &httpChecker{dialer: env.dialer, maxIdle: idleLimit(), idle: map[string][]*httpConn{}}
}

// idleLimit is how many idle probe connections may be kept: three
// quarters of the open-file limit (Go raises the soft limit to the hard
// one at start), leaving the rest to raft, the API, the providers and the
// probes that reconnect.
func idleLimit() int {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil || rl.Cur == 0 {
		return 1024
	}
	return int(max(min(rl.Cur, 1<<20)*3/4, 64))
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

// run performs one HTTP check. A kept connection the instance closed
// meanwhile fails at once; the probe is then retried once on a new one.
func (h *httpChecker) run(ctx context.Context, j *job) (bool, string) {
	if err := validRequestTarget(j.check.Path); err != nil {
		return false, clip("bad request: " + err.Error())
	}
	req := requestBytes(j.check.Path, j.address)
	for attempt := 0; ; attempt++ {
		hc, reused := h.get(j.address)
		if hc == nil {
			c, err := h.dialer.DialContext(ctx, "tcp", j.address)
			if err != nil {
				return false, j.describe(ctx, err)
			}
			hc = &httpConn{c: c}
		}
		code, keep, err := roundTrip(ctx, hc, req)
		if err != nil {
			hc.c.Close()
			if reused && attempt == 0 && ctx.Err() == nil && !errors.Is(err, os.ErrDeadlineExceeded) {
				continue
			}
			return false, httpDetail(ctx, j, code, err)
		}
		if keep {
			h.put(j.address, hc)
		} else {
			hc.c.Close()
		}
		return slices.Contains(j.check.ExpectStatus, code), statusDetail(code)
	}
}

// httpDetail says why a probe failed: a timeout, the status and what
// went wrong reading the body, or what went wrong before a status.
func httpDetail(ctx context.Context, j *job, code int, err error) string {
	var d string
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded) && !errors.Is(ctx.Err(), context.Canceled):
		d = j.timeoutDetail
	default:
		d = j.describe(ctx, err)
	}
	if code != 0 {
		return statusDetail(code) + "; reading body: " + d
	}
	return d
}

// roundTrip sends one request on hc and reads the answer: its status,
// whether the connection can carry another request, and an error (with
// the status when it came while reading the body). The connection's
// deadline is the check's; cancelling ctx (the instance was dropped)
// interrupts it at once.
func roundTrip(ctx context.Context, hc *httpConn, req []byte) (code int, keep bool, err error) {
	if dl, ok := ctx.Deadline(); ok {
		_ = hc.c.SetDeadline(dl)
	} else {
		_ = hc.c.SetDeadline(time.Time{})
	}
	stop := context.AfterFunc(ctx, func() { _ = hc.c.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	hc.budget = maxHeader + maxBody
	if _, err := hc.c.Write(req); err != nil {
		return 0, false, err
	}
	br := readers.Get().(*bufio.Reader)
	br.Reset(hc)
	defer func() { br.Reset(nil); readers.Put(br) }()
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return 0, false, err
	}
	hc.budget = maxBody + 1
	n, err := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err != nil && !errors.Is(err, errTooLong) {
		return resp.StatusCode, false, err
	}
	// A body longer than maxBody is not read to its end: the connection
	// cannot be reused, and the probe is judged by its status.
	complete := err == nil && n <= maxBody
	return resp.StatusCode, complete && !resp.Close && br.Buffered() == 0, nil
}

// validRequestTarget refuses a path that would break the request line.
func validRequestTarget(path string) error {
	for i := 0; i < len(path); i++ {
		if c := path[i]; c <= ' ' || c == 0x7f {
			return errors.New("path holds a space or control character")
		}
	}
	return nil
}

func requestBytes(path, address string) []byte {
	b := make([]byte, 0, 64+len(path)+len(address))
	b = append(b, "GET "...)
	b = append(b, path...)
	b = append(b, " HTTP/1.1\r\nHost: "...)
	b = append(b, address...)
	b = append(b, "\r\nUser-Agent: "+userAgent+"\r\n\r\n"...)
	return b
}

// get takes an idle connection to address, if one is kept.
func (h *httpChecker) get(address string) (*httpConn, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	cs := h.idle[address]
	if len(cs) == 0 {
		return nil, false
	}
	hc := cs[len(cs)-1]
	if len(cs) == 1 {
		delete(h.idle, address)
	} else {
		cs[len(cs)-1] = nil
		h.idle[address] = cs[:len(cs)-1]
	}
	h.nidle--
	return hc, true
}

// put keeps hc for the next probe of address, or closes it when the
// idle cap is reached.
func (h *httpChecker) put(address string, hc *httpConn) {
	h.mu.Lock()
	if h.nidle >= h.maxIdle {
		h.mu.Unlock()
		hc.c.Close()
		return
	}
	h.idle[address] = append(h.idle[address], hc)
	h.nidle++
	h.mu.Unlock()
}

// release closes the idle connections to an instance no longer probed
// at address.
func (h *httpChecker) release(_, address string) {
	h.mu.Lock()
	cs := h.idle[address]
	delete(h.idle, address)
	h.nidle -= len(cs)
	h.mu.Unlock()
	for _, hc := range cs {
		hc.c.Close()
	}
}

func (h *httpChecker) closeIdle() {
	h.mu.Lock()
	all := h.idle
	h.idle, h.nidle = map[string][]*httpConn{}, 0
	h.mu.Unlock()
	for _, cs := range all {
		for _, hc := range cs {
			hc.c.Close()
		}
	}
}
