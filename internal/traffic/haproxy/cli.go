package haproxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/immutd/immutd/internal/traffic"
)

// maxAnswer bounds what is read from the socket for one command. "show
// servers state" is about 100 bytes and "show stat" about 700 bytes per
// server, so this leaves room for well over a thousand servers.
const maxAnswer = 1 << 20

// maxQuoted bounds how much of HAProxy's answer an error quotes.
const maxQuoted = 240

// refusedError is a command HAProxy answered with something other than
// success.
type refusedError struct {
	socket, cmd, answer string
}

func (e *refusedError) Error() string {
	return fmt.Sprintf("%s refused %q: %s", e.socket, e.cmd, quote(e.answer))
}

// quote returns answer trimmed, cut to maxQuoted bytes and quoted.
func quote(answer string) string {
	a := strings.TrimSpace(answer)
	if len(a) > maxQuoted {
		return fmt.Sprintf("%q (cut at %d of %d bytes)", a[:maxQuoted], maxQuoted, len(a))
	}
	return fmt.Sprintf("%q", a)
}

// refusedWith reports whether err is HAProxy refusing a command with an
// answer that contains msg.
func refusedWith(err error, msg string) bool {
	var r *refusedError
	return errors.As(err, &r) && strings.Contains(r.answer, msg)
}

// checkCommand refuses a command that could be taken as more than one:
// the CLI splits commands at ';' and newlines and unescapes '\'. Every
// command is built from validated parts, so this is a second line of
// defence.
func checkCommand(cmd string) error {
	if cmd == "" || len(cmd) > 1024 {
		return fmt.Errorf("command of %d bytes", len(cmd))
	}
	for i := 0; i < len(cmd); i++ {
		if c := cmd[i]; c < 0x20 || c >= 0x7f || c == ';' || c == '\\' || c == '#' {
			return fmt.Errorf("command %q has a character the runtime API would interpret (%q)", cmd, c)
		}
	}
	return nil
}

// command sends one command on a connection of its own and returns the
// whole answer. It fails with an error wrapping traffic.ErrUnreachable when
// the socket cannot be reached, written or read in time.
func (b *Backend) command(ctx context.Context, cmd string) (string, error) {
	if err := checkCommand(cmd); err != nil {
		return "", err
	}
	ctx, cancel := context.WithTimeout(ctx, b.cfg.Timeout)
	defer cancel()
	unreachable := func(err error) error {
		cerr := ctx.Err()
		if cerr == nil && errors.Is(err, os.ErrDeadlineExceeded) {
			cerr = context.DeadlineExceeded // the socket's deadline, a hair before ctx's
		}
		if cerr != nil && !errors.Is(err, cerr) {
			err = fmt.Errorf("%w (%w)", err, cerr)
		}
		return fmt.Errorf("%s: %w: %w", b.cfg.Socket, traffic.ErrUnreachable, err)
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", b.cfg.Socket)
	if err != nil {
		return "", unreachable(err)
	}
	defer conn.Close()
	deadline, _ := ctx.Deadline() // set by WithTimeout above
	if err := conn.SetDeadline(deadline); err != nil {
		return "", unreachable(err)
	}
	// A context canceled before its deadline ends the exchange at once.
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	if _, err := io.WriteString(conn, cmd+"\n"); err != nil {
		return "", unreachable(fmt.Errorf("send %q: %w", cmd, err))
	}
	// In non-interactive mode HAProxy closes the connection after the
	// answer, so the answer is everything up to EOF.
	answer, err := io.ReadAll(io.LimitReader(conn, int64(b.maxAnswer)+1))
	if err != nil {
		return "", unreachable(fmt.Errorf("read answer to %q: %w", cmd, err))
	}
	if len(answer) > b.maxAnswer {
		return "", fmt.Errorf("%s: answer to %q exceeds %d bytes", b.cfg.Socket, cmd, b.maxAnswer)
	}
	b.log.Debug("runtime api command", zap.String("command", cmd), zap.Int("answer_bytes", len(answer)))
	return string(answer), nil
}

// do sends a command that changes state and returns nil if ok accepts
// HAProxy's answer, or an error quoting the answer.
func (b *Backend) do(ctx context.Context, cmd string, ok func(answer string) bool) error {
	answer, err := b.command(ctx, cmd)
	if err != nil {
		return err
	}
	if !ok(strings.TrimSpace(answer)) {
		return &refusedError{socket: b.cfg.Socket, cmd: cmd, answer: answer}
	}
	return nil
}

// Answers of successful commands (HAProxy 2.6 does not mark errors, so
// success is recognized instead).
func empty(a string) bool      { return a == "" }
func registered(a string) bool { return strings.HasSuffix(a, "New server registered.") }
func deleted(a string) bool    { return a == "Server deleted." }

// addrChanged accepts the answers of "set server ... addr ... port ...":
// "IP changed from ..., port changed from ..." or "no need to change ...".
func addrChanged(a string) bool {
	return strings.HasSuffix(a, "by 'stats socket command'") &&
		(strings.HasPrefix(a, "IP changed from ") || strings.HasPrefix(a, "no need to change the addr"))
}
