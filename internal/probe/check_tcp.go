package probe

import (
	"context"
	"net"

	"github.com/immutd/immutd/internal/state"
)

// KindTCP is a connect to the instance's address, then a close.
const KindTCP = "tcp"

// tcpChecker runs tcp checks.
type tcpChecker struct {
	dialer *net.Dialer
}

func newTCPChecker(env checkEnv) *tcpChecker { return &tcpChecker{dialer: env.dialer} }

func (t *tcpChecker) normalize(c state.Check) state.Check { return c }

func (t *tcpChecker) describe(_ state.Check, address string) string { return "dial " + address }

// run performs one TCP check: connect, then close.
func (t *tcpChecker) run(ctx context.Context, j *job) (bool, string) {
	conn, err := t.dialer.DialContext(ctx, "tcp", j.address)
	if err != nil {
		return false, j.describe(ctx, err)
	}
	conn.Close()
	return true, "connected"
}
