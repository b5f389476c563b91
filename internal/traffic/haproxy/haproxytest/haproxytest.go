// Package haproxytest runs real haproxy processes for tests: one
// configuration in a test's temporary directory with an admin stats
// socket, one frontend on a free loopback port per backend, and backends
// with "balance roundrobin" (or another algorithm) and optional static
// servers. It owns the processes it starts and stops them, by PID, when
// the test ends.
//
// The haproxy binary is found in PATH; .ci/ensure-tools installs it
// (Debian package "haproxy"). A missing binary fails the test; under go
// test -short (unit tests only) Start skips the test instead.
package haproxytest

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// readyTimeout bounds the wait for a started or reloaded haproxy to serve,
// and for a stopping one to end. Generous: tests run on loaded machines.
const readyTimeout = 30 * time.Second

// Options describe the configuration to run.
type Options struct {
	// Backends of the configuration, each with a frontend of its own.
	// Default: one backend "web" without servers.
	Backends []Backend
}

// Backend is one HAProxy backend.
type Backend struct {
	Name string
	// Balance is the load-balancing algorithm; default "roundrobin".
	Balance string
	// Lines are extra directives of the backend, one per line
	// (e.g. "option httpchk GET /healthz").
	Lines []string
	// Servers are static servers, as an operator defines them.
	Servers []Server
}

// Server is a static server line: "server <Name> <Addr> <Options>".
type Server struct {
	Name, Addr string
	Options    string // e.g. "check"; optional
}

// Instance is a running haproxy.
type Instance struct {
	// Dir holds the configuration, the socket and haproxy's output.
	Dir string
	// Socket is the admin stats socket ("level admin").
	Socket string
	// Addr is the frontend of the first backend, host:port.
	Addr string
	// Frontends maps each backend's name to its frontend, host:port.
	Frontends map[string]string

	config string
	logf   *os.File

	mu    sync.Mutex
	cur   *proc   // the process serving now
	procs []*proc // every process started, for cleanup
}

// proc is one haproxy process.
type proc struct {
	cmd  *exec.Cmd
	done chan struct{} // closed when it has exited
	err  error         // its exit, once done is closed
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

var validName = regexp.MustCompile(`^[A-Za-z0-9._:-]{1,64}$`)

// Start runs haproxy with the configuration opts describe and returns once
// it serves: the socket answers and every frontend accepts connections.
// It fails the test if haproxy is missing or does not start; in -short
// mode it skips the test.
func Start(t testing.TB, opts Options) *Instance {
	t.Helper()
	if testing.Short() {
		t.Skip("runs haproxy: skipped in -short mode (unit tests only)")
	}
	bin, err := exec.LookPath("haproxy")
	if err != nil {
		t.Fatalf("haproxy not found in PATH (run .ci/ensure-tools, or apt-get install haproxy): %v", err)
	}
	if len(opts.Backends) == 0 {
		opts.Backends = []Backend{{Name: "web"}}
	}
	checkOptions(t, opts)

	dir := t.TempDir()
	if len(dir)+len("/admin.sock") > 100 { // unix socket paths are short
		if dir, err = os.MkdirTemp("", "haproxytest"); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(dir) })
	}
	i := &Instance{Dir: dir, Socket: filepath.Join(dir, "admin.sock")}
	if i.logf, err = os.Create(filepath.Join(dir, "haproxy.log")); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { i.stop(t) })

	// A free port can be taken by someone else before haproxy binds it:
	// then haproxy exits, and it is tried again with other ports.
	for attempt := 1; ; attempt++ {
		i.Frontends = map[string]string{}
		for n, addr := range freeAddrs(t, len(opts.Backends)) {
			i.Frontends[opts.Backends[n].Name] = addr
		}
		i.Addr = i.Frontends[opts.Backends[0].Name]
		i.config = filepath.Join(dir, "haproxy.cfg")
		if err := os.WriteFile(i.config, []byte(i.render(opts)), 0o644); err != nil {
			t.Fatal(err)
		}
		p, err := i.spawn(bin)
		if err == nil {
			err = i.waitServing(p)
		}
		if err == nil {
			i.mu.Lock()
			i.cur = p
			i.mu.Unlock()
			return i
		}
		if attempt == 3 || p == nil || !p.exited() || !strings.Contains(i.logTail(), "cannot bind socket") {
			t.Fatalf("haproxytest: start: %v\nhaproxy output:\n%s", err, i.logTail())
		}
		t.Logf("haproxytest: start attempt %d: a port was taken, trying others", attempt)
	}
}

func checkOptions(t testing.TB, opts Options) {
	t.Helper()
	seen := map[string]bool{}
	for _, b := range opts.Backends {
		if !validName.MatchString(b.Name) || seen[b.Name] {
			t.Fatalf("haproxytest: backend name %q (invalid or used twice)", b.Name)
		}
		seen[b.Name] = true
		if b.Balance != "" && !regexp.MustCompile(`^[a-z0-9_ ()-]+$`).MatchString(b.Balance) {
			t.Fatalf("haproxytest: backend %s: balance %q", b.Name, b.Balance)
		}
		for _, l := range b.Lines {
			if strings.ContainsAny(l, "\r\n") {
				t.Fatalf("haproxytest: backend %s: line %q has a line break", b.Name, l)
			}
		}
		for _, s := range b.Servers {
			if !validName.MatchString(s.Name) || s.Addr == "" || strings.ContainsAny(s.Addr, " \t\r\n") || strings.ContainsAny(s.Options, "\r\n") {
				t.Fatalf("haproxytest: backend %s: server %q address %q options %q", b.Name, s.Name, s.Addr, s.Options)
			}
		}
	}
}

// render writes the configuration.
func (i *Instance) render(opts Options) string {
	var c strings.Builder
	fmt.Fprintf(&c, `global
	maxconn 256
	stats socket %s level admin mode 600
	stats timeout 1m
	# bounds how long a process left by a reload serves its sessions
	hard-stop-after 1m

defaults
	mode http
	timeout connect 5s
	timeout client 1m
	timeout server 1m
	timeout queue 10s
`, i.Socket)
	for _, b := range opts.Backends {
		fmt.Fprintf(&c, "\nfrontend fe_%s\n\tbind %s\n\tdefault_backend %s\n", b.Name, i.Frontends[b.Name], b.Name)
		balance := b.Balance
		if balance == "" {
			balance = "roundrobin"
		}
		fmt.Fprintf(&c, "\nbackend %s\n\tbalance %s\n", b.Name, balance)
		for _, l := range b.Lines {
			fmt.Fprintf(&c, "\t%s\n", l)
		}
		for _, s := range b.Servers {
			fmt.Fprintf(&c, "\tserver %s %s %s\n", s.Name, s.Addr, s.Options)
		}
	}
	return c.String()
}

// spawn starts haproxy in the foreground (-db) on the configuration, with
// extra arguments.
func (i *Instance) spawn(bin string, args ...string) (*proc, error) {
	cmd := exec.Command(bin, append([]string{"-db", "-f", i.config}, args...)...)
	cmd.Dir = i.Dir
	cmd.Stdout = i.logf
	cmd.Stderr = i.logf
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("run %s: %w", bin, err)
	}
	p := &proc{cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	i.mu.Lock()
	i.procs = append(i.procs, p)
	i.mu.Unlock()
	return p, nil
}

// waitServing waits until p answers on the socket ("show info" gives its
// PID) and every frontend accepts connections, or p exits, or
// readyTimeout passes.
func (i *Instance) waitServing(p *proc) error {
	pid := p.cmd.Process.Pid
	deadline := time.Now().Add(readyTimeout)
	delay := 5 * time.Millisecond
	var last error
	for {
		if p.exited() {
			return fmt.Errorf("haproxy (pid %d) exited: %v", pid, p.err)
		}
		last = i.serves(pid)
		if last == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("haproxy (pid %d) not serving after %s: %w", pid, readyTimeout, last)
		}
		select {
		case <-p.done:
		case <-time.After(delay):
		}
		delay = min(2*delay, 200*time.Millisecond)
	}
}

// serves checks that process pid answers on the socket and that the
// frontends accept connections.
func (i *Instance) serves(pid int) error {
	info, err := i.Command("show info")
	if err != nil {
		return err
	}
	if got := infoPID(info); got != pid {
		return fmt.Errorf("socket served by pid %d", got)
	}
	for _, addr := range i.Frontends {
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			return err
		}
		c.Close()
	}
	return nil
}

// infoPID returns the "Pid:" line of "show info", or 0.
func infoPID(info string) int {
	s := bufio.NewScanner(strings.NewReader(info))
	for s.Scan() {
		if v, ok := strings.CutPrefix(s.Text(), "Pid: "); ok {
			pid, _ := strconv.Atoi(strings.TrimSpace(v))
			return pid
		}
	}
	return 0
}

// PID is the process serving now.
func (i *Instance) PID() int {
	i.mu.Lock()
	defer i.mu.Unlock()
	return i.cur.cmd.Process.Pid
}

// Reload gracefully reloads the same configuration, as a service manager
// would: a new process starts with "-sf <old pid>", takes over the socket
// and the frontends, and tells the old one to finish its sessions and
// exit. Servers added at runtime are gone after it. Reload returns once
// the new process serves and the old one no longer listens (sessions it
// still serves go on until they end or hard-stop-after).
func (i *Instance) Reload(t testing.TB) {
	t.Helper()
	old := func() *proc { i.mu.Lock(); defer i.mu.Unlock(); return i.cur }()
	oldPID := old.cmd.Process.Pid
	p, err := i.spawn(old.cmd.Path, "-sf", strconv.Itoa(oldPID))
	if err == nil {
		err = i.waitServing(p)
	}
	if err == nil {
		err = waitNotListening(old)
	}
	if err != nil {
		t.Fatalf("haproxytest: reload (old pid %d): %v\nhaproxy output:\n%s", oldPID, err, i.logTail())
	}
	i.mu.Lock()
	i.cur = p
	i.mu.Unlock()
}

// waitNotListening waits until p has exited or holds no listening TCP
// socket (Linux /proc), bounded by readyTimeout.
func waitNotListening(p *proc) error {
	deadline := time.Now().Add(readyTimeout)
	delay := 5 * time.Millisecond
	for {
		if p.exited() {
			return nil
		}
		n, err := listeningSockets(p.cmd.Process.Pid)
		if err != nil {
			return err
		}
		if n == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("old haproxy (pid %d) still listens on %d sockets after %s", p.cmd.Process.Pid, n, readyTimeout)
		}
		select {
		case <-p.done:
		case <-time.After(delay):
		}
		delay = min(2*delay, 200*time.Millisecond)
	}
}

// listeningSockets counts the listening TCP sockets process pid holds.
func listeningSockets(pid int) (int, error) {
	listen := map[string]bool{} // socket inodes in state LISTEN
	for _, f := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		b, err := os.ReadFile(f)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return 0, err
		}
		for _, line := range strings.Split(string(b), "\n")[1:] {
			// sl local rem st tx:rx tr:when retrnsmt uid timeout inode
			if f := strings.Fields(line); len(f) > 9 && f[3] == "0A" {
				listen[f[9]] = true
			}
		}
	}
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil // exited
	}
	if err != nil {
		return 0, err
	}
	n := 0
	for _, fd := range fds {
		link, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
		if err != nil {
			continue // closed meanwhile
		}
		if inode, ok := strings.CutPrefix(link, "socket:["); ok && listen[strings.TrimSuffix(inode, "]")] {
			n++
		}
	}
	return n, nil
}

// Command sends one runtime API command on the admin socket and returns
// HAProxy's answer. It is for tests to read or change HAProxy's state
// independently of the code under test.
func (i *Instance) Command(cmd string) (string, error) {
	c, err := net.DialTimeout("unix", i.Socket, 10*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	if err := c.SetDeadline(time.Now().Add(10 * time.Second)); err != nil {
		return "", err
	}
	if _, err := io.WriteString(c, cmd+"\n"); err != nil {
		return "", err
	}
	b, err := io.ReadAll(io.LimitReader(c, 4<<20))
	return string(b), err
}

// stop ends every process still running: SIGTERM (HAProxy's hard stop),
// then SIGKILL if it has not exited within readyTimeout. Processes are
// addressed by the PID they were started with, never by name.
func (i *Instance) stop(t testing.TB) {
	i.mu.Lock()
	procs := i.procs
	i.mu.Unlock()
	for _, p := range procs {
		if p.exited() {
			continue
		}
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(readyTimeout):
			t.Errorf("haproxytest: haproxy (pid %d) did not stop on SIGTERM; killing it", p.cmd.Process.Pid)
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	}
	if t.Failed() {
		t.Logf("haproxy output (%s):\n%s", i.logf.Name(), i.logTail())
	}
	i.logf.Close()
}

// logTail returns the end of haproxy's output.
func (i *Instance) logTail() string {
	b, err := os.ReadFile(i.logf.Name())
	if err != nil {
		return err.Error()
	}
	if len(b) > 8<<10 {
		b = append([]byte("..."), b[len(b)-8<<10:]...)
	}
	return string(bytes.TrimSpace(b))
}

// freeAddrs returns n loopback addresses with distinct ports that were
// free just now.
func freeAddrs(t testing.TB, n int) []string {
	t.Helper()
	var addrs []string
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close() // held until all are chosen, so they differ
		addrs = append(addrs, l.Addr().String())
	}
	return addrs
}
