package haproxy

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/immutd/immutd/internal/traffic"
)

// DefaultTimeout bounds one runtime API command when Config.Timeout is 0.
const DefaultTimeout = 5 * time.Second

// maxSocketPath is the longest path a unix socket address can hold
// (sun_path is 108 bytes with the terminating NUL).
const maxSocketPath = 107

// Config says which HAProxy backend to switch, and how.
type Config struct {
	// Socket is the path of HAProxy's admin stats socket, a unix socket
	// declared with "stats socket <path> level admin".
	Socket string
	// Backend is the HAProxy backend the servers go into. It must use a
	// dynamic load-balancing algorithm (roundrobin, leastconn, ...) for
	// "add server" to work.
	Backend string
	// Check adds servers with HAProxy's own health check ("check", then
	// "enable health"), and Admit returns only once it passed. The check
	// is the backend's (e.g. "option httpchk"), with HAProxy's default
	// timings (inter 2s, rise 2, fall 3). Default false.
	Check bool
	// Timeout bounds each runtime API command; 0 means DefaultTimeout.
	Timeout time.Duration
}

// Backend is a traffic.Backend switching the servers of one HAProxy
// backend. It is safe for concurrent use.
type Backend struct {
	cfg       Config
	log       *zap.Logger
	maxAnswer int
}

var _ traffic.Backend = (*Backend)(nil)

// New checks cfg and returns a Backend for it. It does not connect: an
// unreachable socket shows in the first call.
func New(cfg Config, log *zap.Logger) (*Backend, error) {
	var errs []error
	switch {
	case cfg.Socket == "":
		errs = append(errs, errors.New("socket: must be set to the path of the admin stats socket"))
	case strings.ContainsRune(cfg.Socket, 0) || !filepath.IsAbs(cfg.Socket):
		errs = append(errs, fmt.Errorf("socket %q: must be an absolute path", cfg.Socket))
	case len(cfg.Socket) > maxSocketPath:
		errs = append(errs, fmt.Errorf("socket %q: %d bytes, longer than the %d a unix socket path can have", cfg.Socket, len(cfg.Socket), maxSocketPath))
	}
	if !validBackend.MatchString(cfg.Backend) {
		errs = append(errs, fmt.Errorf("backend %q: must be an HAProxy backend name: 1-128 letters, digits, '.', '_', ':' or '-'", cfg.Backend))
	}
	switch {
	case cfg.Timeout < 0:
		errs = append(errs, fmt.Errorf("timeout %s: must not be negative", cfg.Timeout))
	case cfg.Timeout == 0:
		cfg.Timeout = DefaultTimeout
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("haproxy: config: %w", errors.Join(errs...))
	}
	if log == nil {
		log = zap.NewNop()
	}
	return &Backend{
		cfg:       cfg,
		log:       log.Named("haproxy").With(zap.String("backend", cfg.Backend)),
		maxAnswer: maxAnswer,
	}, nil
}

// Name identifies the backend: haproxy "<backend>".
func (b *Backend) Name() string { return fmt.Sprintf("haproxy %q", b.cfg.Backend) }

// Close releases nothing: every command has its own connection.
func (b *Backend) Close() error { return nil }

// Admit puts m's server into traffic: it adds the server if it is missing,
// moves it to m's address if it has another one, and sets it ready; with
// Config.Check it waits, bounded by ctx, until HAProxy's health check of
// the server has passed before setting it ready. It returns nil once
// "show servers state" shows the server ready and up at m's address.
func (b *Backend) Admit(ctx context.Context, m traffic.Member) error {
	name, addr, err := member(m, true)
	if err == nil {
		err = b.admit(ctx, name, addr, true)
	}
	if err != nil {
		return fmt.Errorf("haproxy: admit %s: %w", m.InstanceID, err)
	}
	return nil
}

// moveStep is admit's step for a server at another address: take it out
// of traffic, then move it.
func (b *Backend) moveStep(ctx context.Context, act func(string, func() error) error, srv string, addr netip.AddrPort, st server) error {
	if !st.maint() {
		return act("maint", func() error { return b.setState(ctx, srv, "maint") })
	}
	return act("set addr", func() error {
		return b.do(ctx, fmt.Sprintf("set server %s addr %s port %d", b.path(srv), addr.Addr(), addr.Port()), addrChanged)
	})
}

// maxSteps bounds the changes one admit makes: each step below moves the
// server one state on, so more means something else changes it back.
const maxSteps = 12

// admit drives server srv to ready at addr, one step per read of its
// state. With waitCheck (and Config.Check) the server gets traffic only
// after its health check has passed; without it, HAProxy's checks take a
// failing server out afterwards.
func (b *Backend) admit(ctx context.Context, srv string, addr netip.AddrPort, waitCheck bool) error {
	waitCheck = waitCheck && b.cfg.Check
	steps, last := 0, ""
	var settle, check pollDelay
	// act takes one step. The same step twice in a row means the first
	// has not shown yet (HAProxy versions after 2.6 apply some changes
	// asynchronously): it waits a little before repeating it.
	act := func(name string, f func() error) error {
		if steps++; steps > maxSteps {
			return fmt.Errorf("server %s: state still changing after %d steps, last %s (does something else change it?)", srv, maxSteps, name)
		}
		if name == last {
			if err := settle.wait(ctx); err != nil {
				return fmt.Errorf("server %s: %s did not show: %w", srv, name, err)
			}
		}
		last = name
		return f()
	}
	for {
		st, found, err := b.server(ctx, srv)
		if err != nil {
			return err
		}
		switch {
		case !found:
			err = act("add", func() error { return b.add(ctx, srv, addr) })

		case st.addr != addr:
			err = b.moveStep(ctx, act, srv, addr, st)

		case b.cfg.Check && !st.checkConfigured():
			// Added without a check when Config.Check was off: only a
			// server out of traffic can be re-created with one.
			if !st.maint() {
				return fmt.Errorf("server %s: has no health check and is not in maintenance; remove it (after a drain) to have it re-added with one", srv)
			}
			err = act("del", func() error { return b.del(ctx, srv) })

		case b.cfg.Check && !st.checkEnabled():
			err = act("enable health", func() error { return b.do(ctx, "enable health "+b.path(srv), empty) })

		case st.maint() && waitCheck:
			// Out of maintenance into drain, where checks run but no new
			// traffic comes, and down until the check says up.
			err = act("drain", func() error {
				if err := b.setState(ctx, srv, "drain"); err != nil {
					return err
				}
				return b.do(ctx, fmt.Sprintf("set server %s health down", b.path(srv)), empty)
			})

		case st.drain() && waitCheck && !st.checkPassed():
			if err := check.wait(ctx); err != nil {
				return fmt.Errorf("server %s: health check has not passed (%s): %w", srv, checkSummary(st), err)
			}

		case st.maint() || st.drain():
			err = act("ready", func() error { return b.setState(ctx, srv, "ready") })

		case waitCheck && !st.up():
			// Ready, but HAProxy's check has it down: no traffic yet.
			if err := check.wait(ctx); err != nil {
				return fmt.Errorf("server %s: ready but not up (%s): %w", srv, checkSummary(st), err)
			}

		case !st.up() && !b.cfg.Check:
			// Without a check a ready server is up at once; wait for it
			// to show.
			err = act("wait for up", func() error { return nil })

		default:
			// Ready (and up, unless HAProxy's check, not waited for,
			// says otherwise) at addr: confirmed by this read.
			return nil
		}
		if err != nil {
			return err
		}
	}
}

func checkSummary(s server) string {
	return fmt.Sprintf("operational state %d, last check result %d", s.op, s.checkResult)
}

// add creates server srv at addr, in maintenance.
func (b *Backend) add(ctx context.Context, srv string, addr netip.AddrPort) error {
	check := ""
	if b.cfg.Check {
		check = " check"
	}
	err := b.do(ctx, fmt.Sprintf("add server %s %s%s disabled", b.path(srv), formatAddress(addr), check), registered)
	if refusedWith(err, "Already exists a server with the same name") {
		return nil // added meanwhile; the next read shows it
	}
	if err == nil {
		b.log.Debug("server added", zap.String("server", srv), zap.String("address", formatAddress(addr)))
	}
	return err
}

// Drain sets m's server to drain and returns nil once "show servers
// state" shows it draining (or in maintenance, or gone).
func (b *Backend) Drain(ctx context.Context, m traffic.Member) error {
	if err := b.drain(ctx, m); err != nil {
		return fmt.Errorf("haproxy: drain %s: %w", m.InstanceID, err)
	}
	return nil
}

func (b *Backend) drain(ctx context.Context, m traffic.Member) error {
	srv, _, err := member(m, false)
	if err != nil {
		return err
	}
	var settle pollDelay
	for try := 0; ; try++ {
		st, found, err := b.server(ctx, srv)
		if err != nil {
			return err
		}
		if !found || st.maint() || st.drain() {
			return nil
		}
		if try == 3 {
			return fmt.Errorf("server %s: still ready after \"state drain\"", srv)
		}
		if try > 0 { // not shown yet: give HAProxy a moment
			if err := settle.wait(ctx); err != nil {
				return err
			}
		}
		err = b.setState(ctx, srv, "drain")
		if refusedWith(err, "No such server.") {
			continue
		}
		if err != nil {
			return err
		}
	}
}

// Connections returns the current sessions plus queued requests of m's
// server; a server that is not there has none.
func (b *Backend) Connections(ctx context.Context, m traffic.Member) (int, bool, error) {
	srv, _, err := member(m, false)
	if err == nil {
		var n int
		if n, _, err = b.sessions(ctx, srv); err == nil {
			return n, true, nil
		}
	}
	return 0, false, fmt.Errorf("haproxy: connections %s: %w", m.InstanceID, err)
}

// sessions reads the current sessions plus queued requests of srv.
func (b *Backend) sessions(ctx context.Context, srv string) (int, bool, error) {
	cmd := fmt.Sprintf("show stat %s 4 -1", b.cfg.Backend)
	answer, err := b.command(ctx, cmd)
	if err != nil {
		return 0, false, err
	}
	n, found, err := parseSessions(answer, b.cfg.Backend, srv)
	if errors.Is(err, errNotStat) {
		return 0, false, &refusedError{socket: b.cfg.Socket, cmd: cmd, answer: answer}
	}
	return n, found, err
}

// Remove puts m's server in maintenance, ends the sessions it still has
// ("shutdown sessions server": the caller removes only after the sessions
// ended or its drain deadline passed) and deletes it. It returns nil once
// "show servers state" no longer lists the server.
func (b *Backend) Remove(ctx context.Context, m traffic.Member) error {
	srv, _, err := member(m, false)
	if err == nil {
		err = b.remove(ctx, srv, true)
	}
	if err != nil {
		return fmt.Errorf("haproxy: remove %s: %w", m.InstanceID, err)
	}
	return nil
}

// errSessionsLeft is a server in maintenance that cannot be deleted yet.
var errSessionsLeft = errors.New("server still has sessions")

// remove takes srv out of traffic and deletes it. With cut it shuts down
// the server's remaining sessions and waits, bounded by Config.Timeout,
// for HAProxy to let them go; without, a server with sessions is left in
// maintenance and remove returns errSessionsLeft.
func (b *Backend) remove(ctx context.Context, srv string, cut bool) error {
	st, found, err := b.server(ctx, srv)
	if err != nil || !found {
		return err
	}
	if !st.maint() {
		if err := b.setState(ctx, srv, "maint"); refusedWith(err, "No such server.") {
			return nil // deleted meanwhile
		} else if err != nil {
			return err
		}
	}
	if cut {
		if err := b.do(ctx, "shutdown sessions server "+b.path(srv), empty); err != nil && !refusedWith(err, "No such server.") {
			return err
		}
	}
	// Sessions shut down end asynchronously, and later HAProxy versions
	// apply maintenance asynchronously: wait for either, bounded.
	wctx, cancel := context.WithTimeout(ctx, b.cfg.Timeout)
	defer cancel()
	var settle pollDelay
	for {
		err = b.del(ctx, srv)
		again := errors.Is(err, errSessionsLeft) && cut || refusedWith(err, "Only servers in maintenance mode")
		if !again {
			break
		}
		if werr := settle.wait(wctx); werr != nil {
			return fmt.Errorf("%w: %w", err, werr)
		}
	}
	if err != nil {
		return err
	}
	if _, found, err = b.server(ctx, srv); err == nil && found {
		err = fmt.Errorf("server %s: still listed after \"del server\"", srv)
	}
	return err
}

// del deletes srv, which must be in maintenance. A server that is gone
// already is success; one with sessions gives errSessionsLeft.
func (b *Backend) del(ctx context.Context, srv string) error {
	err := b.do(ctx, "del server "+b.path(srv), deleted)
	switch {
	case refusedWith(err, "No such server."):
		return nil
	case refusedWith(err, "still has connections"):
		return fmt.Errorf("server %s: %w: %w", srv, errSessionsLeft, err)
	case err == nil:
		b.log.Debug("server deleted", zap.String("server", srv))
	}
	return err
}

// Sync re-creates and readies every admitted member whose server is
// missing, in maintenance or at another address, and removes servers with
// the prefix whose instance id keep does not know (in maintenance first;
// deleted once their sessions ended, now or on a later pass). Servers of
// members keep knows but admitted does not list, and servers without the
// prefix, are left as they are. Sync does not wait for health checks.
func (b *Backend) Sync(ctx context.Context, admitted []traffic.Member, keep func(instanceID string) bool) error {
	servers, err := b.servers(ctx)
	if err != nil {
		return fmt.Errorf("haproxy: sync: %w", err)
	}
	byName := make(map[string]server, len(servers))
	for _, s := range servers {
		byName[s.name] = s
	}
	var errs []error
	want := make(map[string]bool, len(admitted))
	for _, m := range admitted {
		srv, addr, err := member(m, true)
		if err != nil {
			errs = append(errs, fmt.Errorf("admitted %s: %w", m.InstanceID, err))
			continue
		}
		want[srv] = true
		st, found := byName[srv]
		if found && !st.maint() && st.addr == addr {
			continue
		}
		if err := b.admit(ctx, srv, addr, false); err != nil {
			errs = append(errs, fmt.Errorf("admitted %s: %w", m.InstanceID, err))
			continue
		}
		b.log.Info("admitted server restored", zap.String("instance_id", m.InstanceID), zap.String("server", srv), zap.Bool("was_missing", !found))
	}
	for _, s := range servers {
		id, ours := instanceID(s.name)
		if !ours {
			if strings.HasPrefix(s.name, Prefix) {
				b.log.Warn("server with the prefix but no valid instance id left alone", zap.String("server", s.name))
			}
			continue
		}
		if want[s.name] || keep(id) {
			continue
		}
		err := b.remove(ctx, s.name, false)
		switch {
		case errors.Is(err, errSessionsLeft):
			b.log.Info("unknown server in maintenance until its sessions end", zap.String("instance_id", id), zap.String("server", s.name))
		case err != nil:
			errs = append(errs, fmt.Errorf("unknown %s: %w", id, err))
		default:
			b.log.Info("unknown server removed", zap.String("instance_id", id), zap.String("server", s.name))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("haproxy: sync: %w", err)
	}
	return nil
}

// member returns the server name of m and, with needAddr, its address.
func member(m traffic.Member, needAddr bool) (string, netip.AddrPort, error) {
	srv, err := serverName(m.InstanceID)
	if err != nil || !needAddr {
		return srv, netip.AddrPort{}, err
	}
	addr, err := parseAddress(m.Address)
	return srv, addr, err
}

// path is "<backend>/<server>" as the runtime API names a server.
func (b *Backend) path(srv string) string { return b.cfg.Backend + "/" + srv }

// setState sets srv's administrative state: ready, drain or maint.
func (b *Backend) setState(ctx context.Context, srv, state string) error {
	return b.do(ctx, fmt.Sprintf("set server %s state %s", b.path(srv), state), empty)
}

// servers reads the state of every server of the backend.
func (b *Backend) servers(ctx context.Context) ([]server, error) {
	cmd := "show servers state " + b.cfg.Backend
	answer, err := b.command(ctx, cmd)
	if err != nil {
		return nil, err
	}
	servers, ok, err := parseServersState(answer, b.cfg.Backend)
	if !ok {
		return nil, &refusedError{socket: b.cfg.Socket, cmd: cmd, answer: answer}
	}
	return servers, err
}

// server reads the state of server srv; found is false when it is absent.
func (b *Backend) server(ctx context.Context, srv string) (server, bool, error) {
	servers, err := b.servers(ctx)
	if err != nil {
		return server{}, false, err
	}
	for _, s := range servers {
		if s.name == srv {
			return s, true, nil
		}
	}
	return server{}, false, nil
}

// pollDelay spaces the reads of a wait for HAProxy (a health check to
// pass, sessions to end): 50ms, doubling up to 1s.
type pollDelay struct{ d time.Duration }

// wait waits for the next delay, or returns ctx's error once ctx is done.
func (p *pollDelay) wait(ctx context.Context) error {
	switch {
	case p.d == 0:
		p.d = 50 * time.Millisecond
	case p.d < time.Second:
		p.d = min(2*p.d, time.Second)
	}
	t := time.NewTimer(p.d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
