package local

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// procStat is the part of /proc/<pid>/stat the provider uses.
type procStat struct {
	PID     int
	State   byte
	PPID    int
	PGrp    int
	Session int
	// StartTicks is field 22: start time in clock ticks since boot.
	StartTicks uint64
}

// live reports whether the process is running, i.e. neither a zombie nor dead.
func (s procStat) live() bool {
	return s.State != 'Z' && s.State != 'X' && s.State != 'x'
}

// errNoProcess means /proc has no entry for the pid.
var errNoProcess = errors.New("no such process")

// readProcStat reads /proc/<pid>/stat under procRoot.
func readProcStat(procRoot string, pid int) (procStat, error) {
	if pid <= 0 {
		return procStat{}, errNoProcess
	}
	b, err := os.ReadFile(filepath.Join(procRoot, strconv.Itoa(pid), "stat"))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, unix.ESRCH) {
			return procStat{}, errNoProcess
		}
		return procStat{}, err
	}
	st, err := parseProcStat(b)
	if err != nil {
		return procStat{}, fmt.Errorf("parse /proc/%d/stat: %w", pid, err)
	}
	return st, nil
}

// parseProcStat parses the content of /proc/<pid>/stat. The command name
// (field 2) is in parentheses and may itself contain spaces and
// parentheses, so the fields after it are found from the last ')'.
func parseProcStat(b []byte) (procStat, error) {
	open := bytes.IndexByte(b, '(')
	closing := bytes.LastIndexByte(b, ')')
	if open < 0 || closing < open {
		return procStat{}, errors.New("malformed stat line")
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b[:open])))
	if err != nil {
		return procStat{}, fmt.Errorf("bad pid: %w", err)
	}
	// rest[0] is field 3 (state); field n is rest[n-3].
	rest := strings.Fields(string(b[closing+1:]))
	if len(rest) < 20 || len(rest[0]) != 1 {
		return procStat{}, errors.New("too few fields")
	}
	ppid, err := strconv.Atoi(rest[1])
	if err != nil {
		return procStat{}, fmt.Errorf("bad ppid: %w", err)
	}
	pgrp, err := strconv.Atoi(rest[2])
	if err != nil {
		return procStat{}, fmt.Errorf("bad pgrp: %w", err)
	}
	sid, err := strconv.Atoi(rest[3])
	if err != nil {
		return procStat{}, fmt.Errorf("bad session: %w", err)
	}
	start, err := strconv.ParseUint(rest[19], 10, 64)
	if err != nil {
		return procStat{}, fmt.Errorf("bad starttime: %w", err)
	}
	return procStat{PID: pid, State: rest[0][0], PPID: ppid, PGrp: pgrp, Session: sid, StartTicks: start}, nil
}

// scanProcs returns the stat of every process in /proc whose stat can be
// read. Processes that vanish during the scan are skipped.
func scanProcs(procRoot string) ([]procStat, error) {
	d, err := os.Open(procRoot)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	names, err := d.Readdirnames(-1)
	if err != nil {
		return nil, err
	}
	out := make([]procStat, 0, len(names))
	for _, n := range names {
		pid, err := strconv.Atoi(n)
		if err != nil || pid <= 0 {
			continue
		}
		st, err := readProcStat(procRoot, pid)
		if err != nil {
			continue
		}
		out = append(out, st)
	}
	return out, nil
}

// sessionMembers returns the live processes that belong to the session or
// process group sid (an instance's leader starts both with setsid).
func sessionMembers(procRoot string, sid int) ([]procStat, error) {
	all, err := scanProcs(procRoot)
	if err != nil {
		return nil, err
	}
	var out []procStat
	for _, st := range all {
		if (st.Session == sid || st.PGrp == sid) && st.live() {
			out = append(out, st)
		}
	}
	return out, nil
}

// findSessionLeaderIn returns a live session leader whose working
// directory is root. It recovers the process of an instance whose launch
// was interrupted after the start but before its pid was recorded.
func findSessionLeaderIn(procRoot, root string) (procStat, bool) {
	all, err := scanProcs(procRoot)
	if err != nil {
		return procStat{}, false
	}
	for _, st := range all {
		if st.Session != st.PID || !st.live() {
			continue
		}
		cwd, err := os.Readlink(filepath.Join(procRoot, strconv.Itoa(st.PID), "cwd"))
		if err != nil {
			continue
		}
		if cwd == root {
			return st, true
		}
	}
	return procStat{}, false
}
