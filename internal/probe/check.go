package probe

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"slices"
	"syscall"
	"time"

	"github.com/immutd/immutd/internal/cut"
	"github.com/immutd/immutd/internal/state"
)

// checker runs the checks of one kind. Each kind lives in its own file,
// check_KIND.go, with its Kind constant and its constructor, and has one
// line in newCheckers; its settings are decoded in internal/config. The
// rest of the package (scheduling, thresholds, evidence, metrics) does not
// know the kinds apart.
type checker interface {
	// normalize fills what a check of this kind needs to run that a
	// caller may have left zero, after the settings common to all kinds
	// were filled. It must not share slices with its argument.
	normalize(c state.Check) state.Check
	// describe says what one probe does, for evidence:
	// "GET http://127.0.0.1:4012/healthz", "dial 127.0.0.1:4012".
	describe(c state.Check, address string) string
	// run performs one probe of j, which has an address. ctx carries the
	// check's timeout. It returns whether the check passed and a short
	// detail ("status 200", "connection refused", "NOT_SERVING").
	run(ctx context.Context, j *job) (ok bool, detail string)
}

// Optional capabilities of a checker, found by type assertion.
type (
	// releaser is a checker that keeps something per instance between
	// probes (a connection). release is called, outside the Prober's lock,
	// once an instance is no longer probed at address: it was dropped, or
	// its address changed. Its probes in flight have been cancelled by
	// then.
	releaser interface {
		release(instanceID, address string)
	}
	// idleCloser is a checker that keeps connections open between probes;
	// closeIdle closes them when Run ends.
	idleCloser interface {
		closeIdle()
	}
)

// checkEnv is what the checkers of one Prober share.
type checkEnv struct {
	workers int
	dialer  *net.Dialer
}

// newCheckers is the table of check kinds: one constructor per kind.
func newCheckers(env checkEnv) map[string]checker {
	return map[string]checker{
		KindHTTP:   newHTTPChecker(env),
		KindTCP:    newTCPChecker(env),
		KindGRPC:   newGRPCChecker(env),
		KindExec:   newExecChecker(env),
		KindConsul: newConsulChecker(env),
	}
}

// maxDetail bounds the length of a result's Detail, except for exec
// checks, whose detail is the command's output (maxExecOutput).
const maxDetail = 200

// normalize fills what a check needs to run that a caller may have left
// zero. config applies the documented defaults; this only guards against
// checks that skipped it (a zero interval would spin, a zero threshold
// would never hold).
func normalize(ck checker, c state.Check) state.Check {
	if c.Interval <= 0 {
		c.Interval = 2 * time.Second
	}
	if c.Timeout <= 0 {
		c.Timeout = min(time.Second, c.Interval)
	}
	c.HealthyThreshold = max(c.HealthyThreshold, 1)
	c.UnhealthyThreshold = max(c.UnhealthyThreshold, 1)
	return ck.normalize(c)
}

func checksEqual(a, b []state.Check) bool {
	return slices.EqualFunc(a, b, func(x, y state.Check) bool {
		return x.Name == y.Name && x.Kind == y.Kind && x.Path == y.Path &&
			slices.Equal(x.ExpectStatus, y.ExpectStatus) &&
			x.Service == y.Service && slices.Equal(x.Command, y.Command) &&
			x.Interval == y.Interval && x.Timeout == y.Timeout &&
			x.HealthyThreshold == y.HealthyThreshold &&
			x.UnhealthyThreshold == y.UnhealthyThreshold &&
			x.StartupTimeout == y.StartupTimeout
	})
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

func clip(s string) string { return clipTo(s, maxDetail) }

// clipTo cuts s to at most n bytes (plus "..."), at a rune boundary.
func clipTo(s string, n int) string { return cut.To(s, n, "...") }

func timeoutDetail(d time.Duration) string { return fmt.Sprintf("timeout after %s", d) }
