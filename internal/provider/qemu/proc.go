package qemu

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// procStat returns the state and the start time (clock ticks after boot)
// of a process from /proc/<pid>/stat.
func procStat(pid int) (state byte, start uint64, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, err
	}
	// The command is in parentheses and may hold anything; the fields
	// after the last ')' are: state (3), ..., starttime (22).
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, 0, errors.New("malformed stat")
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 20 {
		return 0, 0, errors.New("malformed stat")
	}
	start, err = strconv.ParseUint(f[19], 10, 64)
	if err != nil {
		return 0, 0, err
	}
	return f[0][0], start, nil
}

// processAlive says whether the process pid that started at start still
// runs (the start time guards against a reused pid); a zombie is dead.
func processAlive(pid int, start uint64) bool {
	if pid <= 0 {
		return false
	}
	state, got, err := procStat(pid)
	return err == nil && got == start && state != 'Z' && state != 'X' && state != 'x'
}

// readPIDFile reads the pid QEMU wrote to the instance directory and
// that process's start time.
func readPIDFile(dir string) (int, uint64, error) {
	b, err := os.ReadFile(filepath.Join(dir, pidFile))
	if err != nil {
		return 0, 0, err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0, 0, fmt.Errorf("pid file holds %q", bytes.TrimSpace(b))
	}
	_, start, err := procStat(pid)
	if err != nil {
		return 0, 0, fmt.Errorf("process %d: %w", pid, err)
	}
	// A pid file can outlive its QEMU (a crash) and the pid be reused:
	// the process must be this instance's QEMU.
	if !isInstanceQEMU(pid, dir) {
		return 0, 0, fmt.Errorf("process %d is not the QEMU of %s", pid, filepath.Base(dir))
	}
	return pid, start, nil
}

// waitExit waits until the process is dead or the deadline passes; it
// says whether it died.
func waitExit(pid int, start uint64, deadline time.Time, done <-chan struct{}) bool {
	for {
		if !processAlive(pid, start) {
			return true
		}
		if !time.Now().Before(deadline) {
			return false
		}
		select {
		case <-done:
			return !processAlive(pid, start)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// isInstanceQEMU says whether process pid is the QEMU of the instance
// directory dir, by its command line (-pidfile names the directory).
func isInstanceQEMU(pid int, dir string) bool {
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	return err == nil && bytes.Contains(cmdline, []byte("\x00-pidfile\x00"+filepath.Join(dir, pidFile)+"\x00"))
}

// instanceQEMUs lists the processes running the QEMU of the instance
// directory dir, found by their command lines. It is the last resort for
// a launch interrupted between starting QEMU and recording its pid: while
// QEMU daemonizes there is no pid file yet, and for a moment two
// processes (the parent and the daemon).
func instanceQEMUs(dir string) []int {
	des, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var out []int
	for _, de := range des {
		pid, err := strconv.Atoi(de.Name())
		if err != nil || pid <= 0 {
			continue
		}
		if isInstanceQEMU(pid, dir) {
			if state, _, err := procStat(pid); err == nil && state != 'Z' && state != 'X' && state != 'x' {
				out = append(out, pid)
			}
		}
	}
	return out
}
