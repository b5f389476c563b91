package haproxy

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// Operational states (srv_op_state) and administrative flags
// (srv_admin_state) of "show servers state", as documented in HAProxy's
// doc/management.txt.
const (
	opRunning = 2

	admMaint = 0x01 | 0x02 | 0x20 // forced, inherited, resolution (not 0x04: a config mark that stays after "disabled")
	admDrain = 0x08 | 0x10        // forced, inherited

	chkConfigured = 0x02
	chkEnabled    = 0x04

	chkResultPassed = 3
)

// server is one line of "show servers state".
type server struct {
	name        string
	addr        netip.AddrPort // invalid when the server has no IP (an FQDN)
	op          int
	admin       int
	checkResult int
	checkState  int
}

func (s server) maint() bool { return s.admin&admMaint != 0 }
func (s server) drain() bool { return s.admin&admDrain != 0 }

// ready is a server in normal mode (neither maintenance nor drain).
func (s server) ready() bool { return !s.maint() && !s.drain() }

// up is a server HAProxy considers fully up.
func (s server) up() bool { return s.op == opRunning }

// checkPassed is a server whose own health check has passed: it is up and
// the last check result is "passed" (a server leaving maintenance is up
// before any check ran, with an unknown result).
func (s server) checkPassed() bool { return s.up() && s.checkResult == chkResultPassed }

func (s server) checkConfigured() bool { return s.checkState&chkConfigured != 0 }
func (s server) checkEnabled() bool    { return s.checkState&chkEnabled != 0 }

// stateColumns are the columns of "show servers state" that are read.
var stateColumns = []string{"be_name", "srv_name", "srv_addr", "srv_port", "srv_op_state", "srv_admin_state", "srv_check_result", "srv_check_state"}

// parseServersState parses the answer of "show servers state <backend>"
// into the servers of backend, in the order HAProxy lists them. It returns
// ok=false when the answer is not a state dump (HAProxy refused: no such
// backend, permission denied).
func parseServersState(answer, backend string) (servers []server, ok bool, err error) {
	lines := strings.Split(answer, "\n")
	if len(lines) < 2 || !strings.HasPrefix(lines[1], "# ") {
		return nil, false, nil
	}
	if v := strings.TrimSpace(lines[0]); v != "1" {
		return nil, true, fmt.Errorf("show servers state: format version %q, want 1", v)
	}
	col := map[string]int{}
	for i, name := range strings.Fields(strings.TrimPrefix(lines[1], "#")) {
		col[name] = i
	}
	for _, c := range stateColumns {
		if _, ok := col[c]; !ok {
			return nil, true, fmt.Errorf("show servers state: no column %s in header %q", c, lines[1])
		}
	}
	for n, line := range lines[2:] {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		if len(f) < len(col) {
			return nil, true, fmt.Errorf("show servers state: line %d has %d fields, the header %d", n+3, len(f), len(col))
		}
		if f[col["be_name"]] != backend {
			continue
		}
		s := server{name: f[col["srv_name"]]}
		ints := []struct {
			column string
			to     *int
		}{
			{"srv_op_state", &s.op}, {"srv_admin_state", &s.admin},
			{"srv_check_result", &s.checkResult}, {"srv_check_state", &s.checkState},
		}
		for _, i := range ints {
			v, err := strconv.Atoi(f[col[i.column]])
			if err != nil {
				return nil, true, fmt.Errorf("show servers state: server %s: %s %q: %w", s.name, i.column, f[col[i.column]], err)
			}
			*i.to = v
		}
		if ip, err := netip.ParseAddr(f[col["srv_addr"]]); err == nil {
			if port, err := strconv.ParseUint(f[col["srv_port"]], 10, 16); err == nil {
				s.addr = netip.AddrPortFrom(ip.Unmap(), uint16(port))
			}
		}
		servers = append(servers, s)
	}
	return servers, true, nil
}

// parseSessions parses the answer of "show stat <backend> 4 -1" (CSV) and
// returns the current sessions plus the queued requests of server srv of
// backend; found is false when the server is not listed.
func parseSessions(answer, backend, srv string) (n int, found bool, err error) {
	header, rest, _ := strings.Cut(answer, "\n")
	if !strings.HasPrefix(header, "# pxname,svname,") {
		return 0, false, errNotStat
	}
	col := map[string]int{}
	for i, name := range strings.Split(strings.TrimPrefix(header, "# "), ",") {
		col[name] = i
	}
	scur, ok1 := col["scur"]
	qcur, ok2 := col["qcur"]
	if !ok1 || !ok2 {
		return 0, false, fmt.Errorf("show stat: no scur or qcur column in header")
	}
	for _, line := range strings.Split(rest, "\n") {
		f := strings.Split(line, ",")
		if len(f) <= max(scur, qcur) || f[0] != backend || f[1] != srv {
			continue
		}
		for _, c := range []int{scur, qcur} {
			if f[c] == "" {
				continue
			}
			v, err := strconv.Atoi(f[c])
			if err != nil {
				return 0, true, fmt.Errorf("show stat: server %s: %q: %w", srv, f[c], err)
			}
			n += v
		}
		return n, true, nil
	}
	return 0, false, nil
}

// errNotStat is an answer to "show stat" that is not a CSV dump.
var errNotStat = errors.New("not a stat dump")
