// Package e2e runs the real immutd binary against real instances: it
// builds the binary and the sample app images once, starts agents on
// loopback ports in temporary directories, and checks what an operator
// would see. Only loopback and processes the tests start are touched.
//
// This file is the harness: every helper more than one test file uses,
// and each only once. The other files hold tests and the helpers only
// they need. Sections, in order: the build (TestMain), agents (env),
// fleet files, status and events, waiting, the CLI and HTTP, small
// helpers, certificates and clusters, docker engines and fleets, and
// benchmark reports.
//
// The suite needs a real Docker engine for its docker tests and root for
// a few; go test -short skips all of it (make test-short), make e2e runs
// only it.
package e2e

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/client"
	"github.com/docker/docker/pkg/stdcopy"

	"github.com/immutd/immutd/internal/api"
	"github.com/immutd/immutd/internal/config"
	"github.com/immutd/immutd/internal/pki"
	"github.com/immutd/immutd/internal/provider/docker"
	"github.com/immutd/immutd/internal/state"
)

// ---- The build ----

var (
	binDir    string // holds immutd
	imagesDir string // holds sampleapp-v1, sampleapp-v2 bundles
	repoRoot  string
)

// TestMain builds immutd and the sample app bundles once, then runs the
// suite. Under go test -short it builds nothing and runs nothing: the
// suite is not a unit test.
func TestMain(m *testing.M) {
	flag.Parse()
	if testing.Short() {
		fmt.Println("e2e: the end-to-end suite is skipped in -short mode (it runs the real immutd binary, Docker and root-only checks; run it with make e2e)")
		os.Exit(0)
	}
	code, err := setup(m)
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e setup:", err)
		os.Exit(1)
	}
	os.Exit(code)
}

func setup(m *testing.M) (int, error) {
	_, file, _, _ := runtime.Caller(0)
	repoRoot = filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
	tmp, err := os.MkdirTemp("", "immutd-e2e-build-")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(tmp)
	binDir = filepath.Join(tmp, "bin")
	imagesDir = filepath.Join(tmp, "images")
	// IMMUTD_E2E_BINARY runs the suite against another immutd binary, for
	// example a previous release, to show which tests it fails.
	if bin := os.Getenv("IMMUTD_E2E_BINARY"); bin != "" {
		if err := os.MkdirAll(binDir, 0o755); err != nil {
			return 0, err
		}
		if err := os.Symlink(bin, filepath.Join(binDir, "immutd")); err != nil {
			return 0, err
		}
	} else if err := goBuild(repoRoot, filepath.Join(binDir, "immutd"), "-X github.com/immutd/immutd/internal/agent.Version=e2e", "./cmd/immutd"); err != nil {
		return 0, err
	}
	// The sim provider's host (a benchmark tool), found beside immutd.
	if err := goBuild(repoRoot, filepath.Join(binDir, "immutd-simhost"), "", "./cmd/immutd-simhost"); err != nil {
		return 0, err
	}
	for _, v := range []string{"1", "2"} {
		dst := filepath.Join(imagesDir, "sampleapp-v"+v)
		if err := copyTree(filepath.Join(repoRoot, "configs", "images", "sampleapp-v"+v), dst); err != nil {
			return 0, err
		}
		if err := goBuild(repoRoot, filepath.Join(dst, "bin", "sampleapp"), "-X main.version="+v+".0.0", "./cmd/sampleapp"); err != nil {
			return 0, err
		}
	}
	return m.Run(), nil
}

// goBuild builds the package pkg of the module tree in dir into out: a
// static binary (CGO_ENABLED=0), -trimpath and without VCS stamping, so
// that the same source gives the same bytes.
func goBuild(dir, out, ldflags, pkg string) error {
	cmd := exec.Command("go", "build", "-trimpath", "-buildvcs=false", "-ldflags", ldflags, "-o", out, pkg)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build %s in %s: %v\n%s", pkg, dir, err, b)
	}
	return nil
}

// copyTree copies the directory src to dst, keeping file modes.
func copyTree(src, dst string) error {
	return filepath.Walk(src, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		out := filepath.Join(dst, rel)
		if fi.IsDir() {
			return os.MkdirAll(out, fi.Mode().Perm()|0o700)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(out, b, fi.Mode().Perm())
	})
}

// ---- Agents ----

// handedOut are the ports freePort gave out in this run: the kernel may
// offer a port again as soon as it is closed, and two agents (or an
// agent's API and cluster port) given one port fail to start.
var (
	portsMu   sync.Mutex
	handedOut = map[int]bool{}
)

// freePort is a loopback port no other caller in this run was given.
func freePort(t testing.TB) int {
	t.Helper()
	portsMu.Lock()
	defer portsMu.Unlock()
	for {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		if !handedOut[port] {
			handedOut[port] = true
			return port
		}
	}
}

// env is one agent in its own temporary directory.
type env struct {
	t         testing.TB
	dir       string
	fleetsDir string
	dataDir   string
	httpAddr  string
	raftAddr  string
	cfgPath   string
	client    *api.Client
	// bin, when set, is the immutd binary launch runs instead of this
	// release's (an earlier release, for upgrade tests).
	bin string

	mu  sync.Mutex
	cmd *exec.Cmd
	log *os.File
}

type envOpts struct {
	autoDrain bool
	// name is the node name (default "e2e").
	name string
	// fleetsDir shares a fleets directory between agents (default: own).
	fleetsDir string
	// raftAddr fixes the cluster address (default: a free port).
	raftAddr string
	// cluster is extra HCL inside the cluster block.
	cluster string
	// extra is extra HCL at the top level (provider blocks, api block).
	extra string
	// dataDir puts the data directory elsewhere (default: its own).
	dataDir string
	// logLevel is the agent's log level (default debug).
	logLevel string
}

// newEnv writes the configuration of an agent and registers its cleanup;
// start (or launch) starts it.
func newEnv(t testing.TB, o envOpts) *env {
	t.Helper()
	dir := t.TempDir()
	if o.name == "" {
		o.name = "e2e"
	}
	if o.logLevel == "" {
		o.logLevel = "debug"
	}
	e := &env{t: t, dir: dir, fleetsDir: filepath.Join(dir, "fleets.d"), dataDir: filepath.Join(dir, "data"),
		httpAddr: fmt.Sprintf("127.0.0.1:%d", freePort(t)), raftAddr: o.raftAddr}
	if e.raftAddr == "" {
		e.raftAddr = fmt.Sprintf("127.0.0.1:%d", freePort(t))
	}
	if o.fleetsDir != "" {
		e.fleetsDir = o.fleetsDir
	}
	if o.dataDir != "" {
		e.dataDir = o.dataDir
	}
	if err := os.MkdirAll(e.fleetsDir, 0o755); err != nil {
		t.Fatal(err)
	}
	e.cfgPath = filepath.Join(dir, "agent.hcl")
	cfg := fmt.Sprintf(`node_name = %q
data_dir = %q
fleets_dir = %q
http_addr = %q
log_level = %q
auto_drain_removed_fleets = %v
reconcile_interval = "500ms"
cluster {
  bind_addr = %q
%s
}
%s
`, o.name, e.dataDir, e.fleetsDir, e.httpAddr, o.logLevel, o.autoDrain, e.raftAddr, o.cluster, o.extra)
	if err := os.WriteFile(e.cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	e.client = api.NewClient(e.httpAddr)
	t.Cleanup(e.cleanup)
	return e
}

// start starts the agent and waits until it is ready.
func (e *env) start() {
	e.t.Helper()
	e.launch()
	e.waitReady(30 * time.Second)
}

// launch starts the agent process without waiting for it.
func (e *env) launch() {
	e.t.Helper()
	e.mu.Lock()
	defer e.mu.Unlock()
	f, err := os.OpenFile(filepath.Join(e.dir, "agent.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		e.t.Fatal(err)
	}
	bin := filepath.Join(binDir, "immutd")
	if e.bin != "" {
		bin = e.bin
	}
	cmd := exec.Command(bin, "agent", "-config", e.cfgPath)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	e.cmd, e.log = cmd, f
}

// waitReady waits until /readyz answers 200.
func (e *env) waitReady(timeout time.Duration) {
	e.t.Helper()
	e.waitFor("agent ready", timeout, func() (bool, string) {
		resp, err := http.Get("http://" + e.httpAddr + "/readyz")
		if err != nil {
			return false, err.Error()
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp.StatusCode == 200, string(b)
	})
}

// pid is the process id of the running agent.
func (e *env) pid() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.cmd.Process.Pid
}

// kill9 kills the agent with SIGKILL, like a crash.
func (e *env) kill9() {
	e.t.Helper()
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.cmd == nil {
		return
	}
	_ = e.cmd.Process.Signal(syscall.SIGKILL)
	_ = e.cmd.Wait()
	e.cmd = nil
	e.log.Close()
}

// stop stops the agent with SIGTERM.
func (e *env) stop() {
	e.t.Helper()
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.cmd == nil {
		return
	}
	_ = e.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = e.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		_ = e.cmd.Process.Kill()
		<-done
		e.t.Errorf("agent did not stop within 20s of SIGTERM")
	}
	e.cmd = nil
	e.log.Close()
}

func (e *env) cleanup() {
	e.kill9()
	// Instances survive the agent on purpose; the test owns them, so it
	// kills every process whose working directory is under its dir.
	for _, pid := range processesUnder(e.dir) {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	// IMMUTD_E2E_KEEP_LOGS=DIR keeps every agent's whole log there, named
	// after the test, for reading a run's timeline afterwards.
	if dir := os.Getenv("IMMUTD_E2E_KEEP_LOGS"); dir != "" {
		if b, err := os.ReadFile(filepath.Join(e.dir, "agent.log")); err == nil {
			name := strings.NewReplacer("/", "_", " ", "_").Replace(e.t.Name())
			_ = os.MkdirAll(dir, 0o755)
			if err := os.WriteFile(filepath.Join(dir, name+"-"+filepath.Base(e.dir)+".log"), b, 0o644); err != nil {
				e.t.Logf("keep agent log: %v", err)
			}
		}
	}
	if e.t.Failed() {
		if b, err := os.ReadFile(filepath.Join(e.dir, "agent.log")); err == nil {
			lines := strings.Split(string(b), "\n")
			if len(lines) > 80 {
				lines = lines[len(lines)-80:]
			}
			e.t.Logf("agent log (tail):\n%s", strings.Join(lines, "\n"))
		}
	}
}

// liveProcesses lists the live processes (not zombies), other than the
// test process itself, for which match holds; match is given the
// process's /proc directory.
func liveProcesses(match func(procDir string) bool) []int {
	ents, _ := os.ReadDir("/proc")
	var out []int
	for _, d := range ents {
		pid, err := strconv.Atoi(d.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		dir := filepath.Join("/proc", d.Name())
		if !match(dir) {
			continue
		}
		stat, err := os.ReadFile(filepath.Join(dir, "stat"))
		if err == nil {
			if i := bytes.LastIndexByte(stat, ')'); i > 0 && i+2 < len(stat) && (stat[i+2] == 'Z' || stat[i+2] == 'X') {
				continue
			}
		}
		out = append(out, pid)
	}
	return out
}

// processesUnder lists live processes whose cwd is under dir.
func processesUnder(dir string) []int {
	return liveProcesses(func(proc string) bool {
		cwd, err := os.Readlink(filepath.Join(proc, "cwd"))
		return err == nil && strings.HasPrefix(cwd, dir+"/")
	})
}

// procValue is the number after "key:" in /proc/PID/file, for example
// VmHWM of status (peak resident memory, in kB) or rchar of io (bytes
// read with read(2) and the like).
func procValue(t testing.TB, pid int, file, key string) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/%s", pid, file))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, key+":"); ok {
			fields := strings.Fields(v)
			if len(fields) == 0 {
				break
			}
			n, err := strconv.ParseInt(fields[0], 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatalf("no %s in /proc/%d/%s", key, pid, file)
	return 0
}

// localPID is the process id of an instance of the local provider (its
// provider reference).
func localPID(t testing.TB, in api.Instance) int {
	t.Helper()
	pid, err := strconv.Atoi(in.ProviderRef)
	if err != nil {
		t.Fatalf("instance %s has no pid: %q", in.ID, in.ProviderRef)
	}
	return pid
}

// ---- Fleet files ----

// fleetFile is the HCL of a test fleet of the local provider.
func fleetFile(name string, size int, version string, extra string) string {
	return fmt.Sprintf(`fleet %q {
  size     = %d
  provider = %q
  image    = %q
  launch {
    stop_grace = "2s"
  }
  health {
    http "ready" {
      path                = "/healthz"
      interval            = "300ms"
      timeout             = "250ms"
      unhealthy_threshold = 2
      startup_timeout     = "15s"
    }
  }
  drift {
    interval = "1s"
  }
%s
}
`, name, size, config.ProviderLocal, filepath.Join(imagesDir, "sampleapp-"+version), extra)
}

// writeFleet writes a fleet file into the agent's fleets directory.
func (e *env) writeFleet(file, content string) {
	e.t.Helper()
	// Write and rename, the way editors save.
	p := filepath.Join(e.fleetsDir, file)
	tmp := filepath.Join(e.fleetsDir, "."+file+".tmp")
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		e.t.Fatal(err)
	}
	if err := os.Rename(tmp, p); err != nil {
		e.t.Fatal(err)
	}
}

// ---- Status and events ----

// status reads the agent's status; an error fails the test.
func (e *env) status() api.Status {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := e.client.Status(ctx)
	if err != nil {
		e.t.Fatalf("status: %v", err)
	}
	return st
}

// trystatus reads the agent's status and returns the error, for loops
// that wait.
func (e *env) trystatus() (api.Status, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return e.client.Status(ctx)
}

// consistentStatus reads the status through the raft leader (a
// consistent read) and returns the error, for loops that wait.
func (e *env) consistentStatus() (api.Status, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return e.client.Status(ctx, true)
}

// fleetOf returns the named fleet of a status.
func fleetOf(st api.Status, name string) (api.Fleet, bool) {
	for _, f := range st.Fleets {
		if f.Name == name {
			return f, true
		}
	}
	return api.Fleet{}, false
}

// fleet is the named fleet of the agent's status (zero if there is none).
func (e *env) fleet(name string) api.Fleet {
	e.t.Helper()
	f, _ := fleetOf(e.status(), name)
	return f
}

// events reads all the events the agent keeps; an error fails the test.
func (e *env) events() []state.Event {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	evs, err := e.client.Events(ctx, 0, "", 5000) // all that the agent keeps
	if err != nil {
		e.t.Fatalf("events: %v", err)
	}
	return evs
}

// lastSeq is the sequence number of the agent's newest event (0 when it
// has none): the mark to take before a step, for eventsAfter and
// waitEvent.
func (e *env) lastSeq() uint64 {
	e.t.Helper()
	evs := e.events()
	if len(evs) == 0 {
		return 0
	}
	return evs[len(evs)-1].Seq
}

// eventsAfter is the agent's events with a sequence number above after.
func (e *env) eventsAfter(after uint64) []state.Event {
	e.t.Helper()
	var out []state.Event
	for _, ev := range e.events() {
		if ev.Seq > after {
			out = append(out, ev)
		}
	}
	return out
}

// findEvent is the first event of evs with the action and, unless
// instanceID is "", the instance; nil when there is none.
func findEvent(evs []state.Event, action state.EventAction, instanceID string) *state.Event {
	for i := range evs {
		if evs[i].Action == action && (instanceID == "" || evs[i].InstanceID == instanceID) {
			return &evs[i]
		}
	}
	return nil
}

// waitEvent waits until the agent has an event with a sequence number
// above after that match accepts, and returns the first such event.
// Reads that fail are tried again until the timeout.
func (e *env) waitEvent(after uint64, timeout time.Duration, match func(state.Event) bool) state.Event {
	e.t.Helper()
	var found state.Event
	e.waitFor(fmt.Sprintf("a matching event after #%d", after), timeout, func() (bool, string) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		evs, err := e.client.Events(ctx, after, "", 0)
		if err != nil {
			return false, err.Error()
		}
		for _, ev := range evs {
			if ev.Seq > after && match(ev) {
				found = ev
				return true, ""
			}
		}
		return false, fmt.Sprintf("none of %d events matches", len(evs))
	})
	return found
}

// waitTerminated waits for the terminated event of an instance of fleet.
func (e *env) waitTerminated(fleet, id string) *state.Event {
	e.t.Helper()
	var ev *state.Event
	e.waitFor("instance "+id+" to be terminated", 60*time.Second, func() (bool, string) {
		ev = findEvent(e.events(), "terminated", id)
		return ev != nil, describe(e.fleet(fleet))
	})
	return ev
}

// passCounter counts the reconcile passes that a series of status reads
// shows: a read whose last pass differs from the read before it is one
// more pass. The first pass seen only sets the mark.
type passCounter struct {
	last    time.Time
	changes int
}

// passes takes one more status read into account and returns the passes
// finished since the mark.
func (p *passCounter) passes(st api.Status) int {
	if !st.LastPass.Equal(p.last) {
		p.last = st.LastPass
		p.changes++
	}
	return p.changes - 1
}

// waitPasses waits until the leader has finished n more reconcile passes.
func (e *env) waitPasses(n int) {
	e.t.Helper()
	var c passCounter
	e.waitFor(fmt.Sprintf("%d more reconcile passes", n), 60*time.Second, func() (bool, string) {
		st, err := e.trystatus()
		if err != nil {
			return false, err.Error()
		}
		seen := c.passes(st)
		return seen >= n, fmt.Sprintf("%d passes seen", seen)
	})
}

// ---- Waiting ----

// waitFor polls cond until it holds or the timeout passes.
func (e *env) waitFor(what string, timeout time.Duration, cond func() (bool, string)) {
	e.t.Helper()
	deadline := time.Now().Add(timeout)
	last := ""
	for {
		ok, detail := cond()
		if ok {
			return
		}
		last = detail
		if time.Now().After(deadline) {
			e.t.Fatalf("timed out after %v waiting for %s; last: %s", timeout, what, last)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// waitHealthy waits until the fleet has n healthy, up-to-date instances
// on the given image and nothing else, none of them one of without.
func (e *env) waitHealthy(name string, n int, digestPrefix string, timeout time.Duration, without ...string) api.Fleet {
	e.t.Helper()
	return e.waitFleetHealthy(e.trystatus, name, n, digestPrefix, timeout, without...)
}

// waitHealthyConsistent is waitHealthy through the leader.
func (e *env) waitHealthyConsistent(name string, n int, timeout time.Duration, without ...string) api.Fleet {
	e.t.Helper()
	return e.waitFleetHealthy(e.consistentStatus, name, n, "", timeout, without...)
}

// waitFleetHealthy is waitHealthy on the status that read returns.
func (e *env) waitFleetHealthy(read func() (api.Status, error), name string, n int, digestPrefix string, timeout time.Duration, without ...string) api.Fleet {
	e.t.Helper()
	var f api.Fleet
	e.waitFor(fmt.Sprintf("%d healthy instances of %s", n, name), timeout, func() (bool, string) {
		st, err := read()
		if err != nil {
			return false, err.Error()
		}
		f, _ = fleetOf(st, name)
		healthy := 0
		for _, in := range f.Instances {
			if slices.Contains(without, in.ID) {
				return false, in.ID + " still listed: " + describe(f)
			}
			if in.State == "healthy" && in.UpToDate && strings.HasPrefix(in.ImageDigest, digestPrefix) {
				healthy++
			}
		}
		return healthy == n && len(f.Instances) == n, describe(f)
	})
	return f
}

// describe is a one-line account of a fleet and its instances.
func describe(f api.Fleet) string {
	var parts []string
	for _, in := range f.Instances {
		parts = append(parts, fmt.Sprintf("%s=%s(%s,uptodate=%v)", in.ID, in.State, shortDigest(in.ImageDigest), in.UpToDate))
	}
	return fmt.Sprintf("fleet %s blocked=%v: %s", f.Name, f.Blocked, strings.Join(parts, " "))
}

func shortDigest(d string) string {
	d = strings.TrimPrefix(d, "sha256:")
	if len(d) > 8 {
		return d[:8]
	}
	return d
}

// ids is the set of a fleet's instance ids.
func ids(f api.Fleet) map[string]bool {
	out := map[string]bool{}
	for _, in := range f.Instances {
		out[in.ID] = true
	}
	return out
}

// keys lists a set's members, padded with "" to at least two.
func keys(m map[string]bool) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	if len(out) < 2 {
		out = append(out, "", "")
	}
	return out
}

// stateOf is the state of the fleet's instance id, or "gone".
func stateOf(f api.Fleet, id string) string {
	for _, in := range f.Instances {
		if in.ID == id {
			return in.State
		}
	}
	return "gone"
}

// ---- The CLI and HTTP ----

// tokenFile is the API token the agent made in its data directory.
func (e *env) tokenFile() string { return filepath.Join(e.dataDir, "api-token") }

// cli runs the immutd binary against this agent, with its address and
// its API token.
func (e *env) cli(args ...string) (string, int) {
	return runCLI(append(args, "-addr", e.httpAddr, "-token-file", e.tokenFile())...)
}

// runCLI runs the immutd binary with args.
func runCLI(args ...string) (string, int) {
	cmd := exec.Command(filepath.Join(binDir, "immutd"), args...)
	out, err := cmd.CombinedOutput()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		code = -1
	}
	return string(out), code
}

// get GETs url (an agent's /metrics, an instance's page) and returns the
// body, whatever the status code; an error fails the test.
func get(t testing.TB, url string) string {
	t.Helper()
	c := http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// answerErr asks addr's /healthz and says why it did not answer 200.
func answerErr(addr string) error {
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get("http://" + addr + "/healthz")
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		return fmt.Errorf("status %d", resp.StatusCode)
	}
	return nil
}

// servingCheck is one availability sample of a fleet: the status, a
// direct /healthz request to every instance the status calls healthy
// (all at once), and the status again.
type servingCheck struct {
	before, after api.Fleet
	healthy       int      // instances healthy in both readings
	serving       int      // of those, the ones that answered 200
	silent        []string // healthy in both readings but not answering, and why
	// stopped are instances healthy in the first reading that did not
	// answer and were no longer healthy in the second, with their state.
	stopped []string
	// settled is false when an instance became or stopped being healthy
	// between the two readings. Such a sample says nothing: immutd may
	// have terminated an old instance in between, right after a new one
	// was judged healthy, so the requests and the first reading disagree
	// without anything being wrong. A terminate is journalled as an open
	// intent before the provider is called, so an instance immutd stopped
	// during the requests is "terminating" or gone in the second reading.
	settled bool
}

func (e *env) checkServing(fleet string) servingCheck {
	e.t.Helper()
	read := func() api.Fleet {
		st, err := e.trystatus()
		if err != nil {
			e.t.Fatal(err)
		}
		f, _ := fleetOf(st, fleet)
		return f
	}
	var c servingCheck
	c.before = read()
	type answer struct {
		id  string
		err error
	}
	asked := map[string]bool{}
	answers := make(chan answer, len(c.before.Instances))
	for _, in := range c.before.Instances {
		if in.State == "healthy" {
			asked[in.ID] = true
			go func() { answers <- answer{in.ID, answerErr(in.Address)} }()
		}
	}
	got := map[string]error{}
	for range asked {
		a := <-answers
		got[a.id] = a.err
	}
	c.after = read()
	c.settled = true
	healthyAfter := map[string]bool{}
	for _, in := range c.after.Instances {
		if in.State == "healthy" {
			healthyAfter[in.ID] = true
			c.settled = c.settled && asked[in.ID]
		}
	}
	for id, err := range got {
		if !healthyAfter[id] {
			c.settled = false
			if err != nil {
				c.stopped = append(c.stopped, id+"="+stateOf(c.after, id))
			}
			continue
		}
		c.healthy++
		if err != nil {
			c.silent = append(c.silent, id+": "+err.Error())
			continue
		}
		c.serving++
	}
	slices.Sort(c.silent)
	return c
}

// ---- Small helpers ----

// must fails the test on an error.
func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// dirBytes is the bytes of the regular files in dir and below it; a file
// that goes away while it is counted counts nothing.
func dirBytes(t testing.TB, dir string) int64 {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	for _, de := range ents {
		if de.IsDir() {
			n += dirBytes(t, filepath.Join(dir, de.Name()))
			continue
		}
		if fi, err := de.Info(); err == nil && fi.Mode().IsRegular() {
			n += fi.Size()
		}
	}
	return n
}

// ---- Certificates and clusters ----

// makeCerts writes a CA and one certificate per name into dir.
func makeCerts(t testing.TB, dir string, names ...string) {
	t.Helper()
	caCert, caKey, err := pki.NewCA("e2e CA", 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := pki.WriteFiles(dir, "ca", caCert, caKey); err != nil {
		t.Fatal(err)
	}
	for _, n := range names {
		c, k, err := pki.NewCert(caCert, caKey, n, []string{"server.immutd", n}, []net.IP{net.ParseIP("127.0.0.1")}, 24*time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		if err := pki.WriteFiles(dir, n, c, k); err != nil {
			t.Fatal(err)
		}
	}
}

// cluster is three (or more) real agents on loopback with mutual TLS,
// sharing one fleets directory and one local provider directory (the
// only way the local provider works in a cluster: one host).
type cluster struct {
	t         testing.TB
	agents    []*env
	fleetsDir string
	localDir  string
	tlsDir    string
	raftAddrs []string
}

// clusterBlock is the inside of an agent's cluster block: expect
// servers, joining join, with name's certificate from tlsDir.
func clusterBlock(tlsDir, name string, join []string, expect int) string {
	quoted := make([]string, len(join))
	for i, j := range join {
		quoted[i] = strconv.Quote(j)
	}
	return fmt.Sprintf(`  bootstrap_expect = %d
  join = [%s]
  tls {
    ca_file   = %q
    cert_file = %q
    key_file  = %q
  }`, expect, strings.Join(quoted, ", "), filepath.Join(tlsDir, "ca.pem"), filepath.Join(tlsDir, name+".pem"), filepath.Join(tlsDir, name+"-key.pem"))
}

// newCluster is n agents sharing one fleets directory; extra is HCL at
// the top level of every agent's configuration.
func newCluster(t testing.TB, n int, extra string) *cluster {
	t.Helper()
	return newClusterOpts(t, n, extra, false)
}

// newClusterOpts can give every agent its own fleets directory
// (separateFleets) instead of one shared directory.
func newClusterOpts(t testing.TB, n int, extra string, separateFleets bool) *cluster {
	t.Helper()
	base := t.TempDir()
	c := &cluster{t: t, fleetsDir: filepath.Join(base, "fleets.d"), localDir: filepath.Join(base, "local-provider"), tlsDir: filepath.Join(base, "tls")}
	for _, d := range []string{c.fleetsDir, c.localDir, c.tlsDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	var names []string
	for i := 0; i < n; i++ {
		names = append(names, fmt.Sprintf("agent-%d", i+1))
		c.raftAddrs = append(c.raftAddrs, fmt.Sprintf("127.0.0.1:%d", freePort(t)))
	}
	makeCerts(t, c.tlsDir, names...)
	for i, name := range names {
		fleets := c.fleetsDir
		if separateFleets {
			fleets = ""
		}
		e := newEnv(t, envOpts{name: name, fleetsDir: fleets, raftAddr: c.raftAddrs[i],
			cluster: clusterBlock(c.tlsDir, name, c.raftAddrs, n),
			extra:   fmt.Sprintf("provider %q {\n  dir = %q\n}\n%s", config.ProviderLocal, c.localDir, extra)})
		c.agents = append(c.agents, e)
	}
	t.Cleanup(func() {
		for _, e := range c.agents {
			e.kill9()
		}
		for _, pid := range processesUnder(c.localDir) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	})
	return c
}

// start starts every agent and waits until all are ready.
func (c *cluster) start() {
	c.t.Helper()
	for _, e := range c.agents {
		e.launch()
	}
	for _, e := range c.agents {
		e.waitReady(60 * time.Second)
	}
}

func (c *cluster) writeFleet(file, content string) { c.agents[0].writeFleet(file, content) }

// leader returns the index of the agent that reports itself leader, as
// seen by all running agents (waits until they agree).
func (c *cluster) leader(down ...int) int {
	c.t.Helper()
	idx := -1
	c.agents[0].waitFor("one agreed leader", 30*time.Second, func() (bool, string) {
		leaders := map[string]int{}
		var leaderName string
		views := 0
		for i, e := range c.agents {
			if slices.Contains(down, i) {
				continue
			}
			st, err := e.trystatus()
			if err != nil {
				return false, fmt.Sprintf("agent %d: %v", i, err)
			}
			views++
			if st.IsLeader {
				idx = i
				leaderName = st.Node
			}
			leaders[st.Leader]++
		}
		return idx >= 0 && len(leaders) == 1 && leaders[""] == 0 && leaderName != "", fmt.Sprintf("leaders seen %v", leaders)
	})
	return idx
}

// waitHealthy waits, through the leader, until the fleet has n healthy
// instances; it asks the first agent not in down.
func (c *cluster) waitHealthy(name string, n int, down ...int) api.Fleet {
	c.t.Helper()
	for i := range c.agents {
		if !slices.Contains(down, i) {
			return c.agents[i].waitHealthyConsistent(name, n, 60*time.Second)
		}
	}
	return api.Fleet{}
}

// ---- Docker engines and fleets ----
//
// Everything a docker test creates is named or labelled with an id
// unique to the test process and the test: images carry the label
// e2eRunLabel=<id> and are tagged <id>/sampleapp:<tag>; fleets are named
// e<run>-<n>-<what>, so the containers immutd makes carry
// io.immutd.fleet=<that name>; the baseline containers of the benchmarks
// carry e2eRunLabel=<id>. Nothing else on the engine is touched.

// e2eRunLabel marks images and containers made by a docker e2e test.
const e2eRunLabel = "io.immutd.e2e-run"

// defaultDockerHost is the machine's engine, shared with other tests.
const defaultDockerHost = "unix:///var/run/docker.sock"

// engineOpTimeout bounds every engine call a helper makes.
const engineOpTimeout = 2 * time.Minute

var (
	runHexOnce sync.Once
	runHexVal  string
	engineSeq  atomic.Int64
)

// runHex is random per test process: it keeps the names of parallel
// runs (and of the docker provider's own tests) apart.
func runHex() string {
	runHexOnce.Do(func() {
		b := make([]byte, 4)
		if _, err := rand.Read(b); err != nil {
			panic(err)
		}
		runHexVal = hex.EncodeToString(b)
	})
	return runHexVal
}

// engine is one test's handle on a Docker engine.
type engine struct {
	t    testing.TB
	host string
	cli  *client.Client
	prov *docker.Provider
	// id labels this test's images and baseline containers.
	id  string
	seq int64
	// private engines belong to the test whole; their dockerd helper
	// removes everything on them.
	private bool

	mu     sync.Mutex
	fleets []string
}

// newEngine connects to the engine at host and registers the removal of
// everything the test makes on it. Call it before newEnv, so that the
// agent is stopped before its containers are removed.
func newEngine(t testing.TB, host string, private bool) *engine {
	t.Helper()
	cli, err := client.NewClientWithOpts(client.WithHost(host), client.WithAPIVersionNegotiation())
	if err != nil {
		t.Fatalf("docker client for %s: %v", host, err)
	}
	prov, err := docker.New(docker.Options{Host: host})
	if err != nil {
		t.Fatal(err)
	}
	seq := engineSeq.Add(1)
	en := &engine{t: t, host: host, cli: cli, prov: prov, private: private, seq: seq,
		id: fmt.Sprintf("immutd-e2e-%s-%d", runHex(), seq)}
	t.Cleanup(func() {
		if !en.private {
			en.removeAll()
		}
		_ = prov.Close()
		_ = cli.Close()
	})
	ctx, cancel := en.ctx()
	defer cancel()
	if _, err := cli.Ping(ctx); err != nil {
		t.Fatalf("the docker tests need a running Docker engine at %s: %v", host, err)
	}
	return en
}

func (en *engine) ctx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), engineOpTimeout)
}

// fleetName returns a fleet name unique to the run and the test.
func (en *engine) fleetName(what string) string {
	name := fmt.Sprintf("e%s-%d-%s", runHex(), en.seq, what)
	if len(name) > 40 {
		name = strings.TrimRight(name[:40], "-")
	}
	en.mu.Lock()
	en.fleets = append(en.fleets, name)
	en.mu.Unlock()
	return name
}

// repo is the image repository of this test's images.
func (en *engine) repo() string { return en.id + "/sampleapp" }

// buildSample builds the sample app bundle of version ("v1", "v2") as
// <repo>:<tag> on the engine and returns the image ID. extra is appended
// to the Dockerfile (for example a CMD). Every build is new: the label
// right after FROM makes no layer shareable with another test's.
func (en *engine) buildSample(version, tag, extra string) string {
	en.t.Helper()
	dir := en.t.TempDir()
	if err := copyTree(filepath.Join(imagesDir, "sampleapp-"+version), dir); err != nil {
		en.t.Fatal(err)
	}
	df, err := os.ReadFile(filepath.Join(repoRoot, "configs", "images", "sampleapp-docker", "Dockerfile"))
	if err != nil {
		en.t.Fatal(err)
	}
	text := strings.Replace(string(df), "FROM scratch\n", fmt.Sprintf("FROM scratch\nLABEL %s=%q\n", e2eRunLabel, en.id), 1)
	if text == string(df) {
		en.t.Fatalf("the sample Dockerfile has no FROM scratch line:\n%s", df)
	}
	if err := os.WriteFile(filepath.Join(dir, "Dockerfile"), []byte(text+extra+"\n"), 0o644); err != nil {
		en.t.Fatal(err)
	}
	ctx, cancel := en.ctx()
	defer cancel()
	id, err := docker.BuildImage(ctx, en.prov, dir, []string{en.repo() + ":" + tag})
	if err != nil {
		en.t.Fatalf("build %s:%s: %v", en.repo(), tag, err)
	}
	return id
}

// tag points <repo>:<tag> at the image id.
func (en *engine) tag(imageID, tag string) {
	en.t.Helper()
	ctx, cancel := en.ctx()
	defer cancel()
	if err := en.cli.ImageTag(ctx, imageID, en.repo()+":"+tag); err != nil {
		en.t.Fatal(err)
	}
}

// containers lists the fleet's containers in any state.
func (en *engine) containers(fleet string) ([]container.Summary, error) {
	ctx, cancel := en.ctx()
	defer cancel()
	return en.cli.ContainerList(ctx, container.ListOptions{All: true,
		Filters: filters.NewArgs(filters.Arg("label", docker.LabelFleet+"="+fleet))})
}

// mustContainers is containers; an error fails the test.
func (en *engine) mustContainers(fleet string) []container.Summary {
	en.t.Helper()
	cs, err := en.containers(fleet)
	if err != nil {
		en.t.Fatalf("list containers of %s: %v", fleet, err)
	}
	return cs
}

func (en *engine) inspect(ref string) (container.InspectResponse, error) {
	ctx, cancel := en.ctx()
	defer cancel()
	return en.cli.ContainerInspect(ctx, ref)
}

// execIn runs cmd in the container as root and fails the test unless it
// exits 0.
func (en *engine) execIn(containerID string, cmd ...string) {
	en.t.Helper()
	ctx, cancel := en.ctx()
	defer cancel()
	ex, err := en.cli.ContainerExecCreate(ctx, containerID, container.ExecOptions{User: "0:0", Cmd: cmd, AttachStdout: true, AttachStderr: true})
	if err != nil {
		en.t.Fatalf("exec create in %s: %v", containerID, err)
	}
	hj, err := en.cli.ContainerExecAttach(ctx, ex.ID, container.ExecAttachOptions{})
	if err != nil {
		en.t.Fatalf("exec start in %s: %v", containerID, err)
	}
	var out bytes.Buffer
	_, err = stdcopy.StdCopy(&out, &out, hj.Reader)
	hj.Close()
	if err != nil {
		en.t.Fatalf("exec output in %s: %v", containerID, err)
	}
	insp, err := en.cli.ContainerExecInspect(ctx, ex.ID)
	if err != nil {
		en.t.Fatal(err)
	}
	if insp.Running || insp.ExitCode != 0 {
		en.t.Fatalf("exec %v in %s: running=%v exit %d: %s", cmd, containerID, insp.Running, insp.ExitCode, out.String())
	}
}

// copyFile adds a file to the container, as `docker cp` does.
func (en *engine) copyFile(containerID, path, content string) {
	en.t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if err := tw.WriteHeader(&tar.Header{Name: strings.TrimPrefix(path, "/"), Mode: 0o644, Size: int64(len(content)), ModTime: time.Now()}); err != nil {
		en.t.Fatal(err)
	}
	if _, err := tw.Write([]byte(content)); err != nil {
		en.t.Fatal(err)
	}
	if err := tw.Close(); err != nil {
		en.t.Fatal(err)
	}
	ctx, cancel := en.ctx()
	defer cancel()
	if err := en.cli.CopyToContainer(ctx, containerID, "/", &buf, container.CopyToContainerOptions{}); err != nil {
		en.t.Fatalf("copy %s into %s: %v", path, containerID, err)
	}
}

// removeAll removes the containers of the test's fleets and the test's
// labelled containers, then the test's images. It runs after the agent
// was stopped; a container created by a call that was in flight when
// the agent died is caught by the second round.
func (en *engine) removeAll() {
	ctx, cancel := en.ctx()
	defer cancel()
	en.mu.Lock()
	fleets := append([]string(nil), en.fleets...)
	en.mu.Unlock()
	var args []filters.Args
	for _, f := range fleets {
		args = append(args, filters.NewArgs(filters.Arg("label", docker.LabelFleet+"="+f)))
	}
	args = append(args, filters.NewArgs(filters.Arg("label", e2eRunLabel+"="+en.id)))
	for round := 0; round < 2; round++ {
		for _, f := range args {
			cs, err := en.cli.ContainerList(ctx, container.ListOptions{All: true, Filters: f})
			if err != nil {
				en.t.Errorf("cleanup: list containers: %v", err)
				return
			}
			for _, c := range cs {
				if err := en.cli.ContainerRemove(ctx, c.ID, container.RemoveOptions{Force: true, RemoveVolumes: true}); err != nil && !cerrdefs.IsNotFound(err) {
					en.t.Errorf("cleanup: remove container %s: %v", c.ID, err)
				}
			}
		}
		if round == 0 {
			time.Sleep(200 * time.Millisecond)
		}
	}
	// Images: leaves first (removing one prunes its untagged parents), a
	// few rounds for whatever is left.
	var lastErr error
	for round := 0; round < 3; round++ {
		imgs, err := en.cli.ImageList(ctx, image.ListOptions{All: true, Filters: filters.NewArgs(filters.Arg("label", e2eRunLabel+"="+en.id))})
		if err != nil {
			en.t.Errorf("cleanup: list images: %v", err)
			return
		}
		if len(imgs) == 0 {
			return
		}
		parents := map[string]bool{}
		for _, img := range imgs {
			parents[img.ParentID] = true
		}
		lastErr = nil
		for _, img := range imgs {
			if parents[img.ID] {
				continue
			}
			if _, err := en.cli.ImageRemove(ctx, img.ID, image.RemoveOptions{Force: true, PruneChildren: true}); err != nil && !cerrdefs.IsNotFound(err) {
				lastErr = fmt.Errorf("remove image %s: %w", img.ID, err)
			}
		}
	}
	en.t.Errorf("cleanup: images labelled %s=%s are left (last error: %v)", e2eRunLabel, en.id, lastErr)
}

// providerBlock is the agent's docker provider configuration.
func providerBlock(host string) string {
	return fmt.Sprintf("provider %q {\n  host = %q\n  publish_host = \"127.0.0.1\"\n}\n", config.ProviderDocker, host)
}

// newDockerEnv is an agent using the engine's docker provider.
func newDockerEnv(t testing.TB, en *engine) *env {
	t.Helper()
	return newEnv(t, envOpts{extra: providerBlock(en.host)})
}

// dockerFleet is a docker fleet file.
type dockerFleet struct {
	name  string
	size  int
	image string // a reference, <repo>:<tag>
	// launch is extra HCL inside launch { }; docker is the inside of
	// launch { docker { } } (default port = 8080).
	launch, docker string
	// startup is the probe's startup_timeout (default 15s).
	startup string
	// extra is HCL at the end of the fleet block.
	extra string
}

func (f dockerFleet) hcl() string {
	dk := f.docker
	if dk == "" {
		dk = "port = 8080"
	}
	startup := f.startup
	if startup == "" {
		startup = "15s"
	}
	return fmt.Sprintf(`fleet %q {
  size     = %d
  provider = %q
  image    = %q
  launch {
    stop_grace = "2s"
%s
    docker {
      %s
    }
  }
  health {
    http "ready" {
      path                = "/healthz"
      interval            = "1s"
      timeout             = "500ms"
      unhealthy_threshold = 3
      startup_timeout     = %q
    }
  }
  drift {
    interval = "1s"
  }
%s
}
`, f.name, f.size, config.ProviderDocker, f.image, f.launch, dk, startup, f.extra)
}

// publishedAddr is the 127.0.0.1 address a container's port is published
// on, or "" when it has none (yet).
func publishedAddr(c container.Summary) string {
	for _, p := range c.Ports {
		if p.PublicPort != 0 && p.IP == "127.0.0.1" {
			return fmt.Sprintf("127.0.0.1:%d", p.PublicPort)
		}
	}
	return ""
}

// dockerSetup is an agent, an engine and a fleet of the sample app v1.
type dockerSetup struct {
	e     *env
	en    *engine
	fleet dockerFleet
	v1    string // image ID of <repo>:1
}

// startDockerFleet builds <repo>:1 (v1), starts an agent keeping a fleet
// of size of it and waits until all are healthy.
func startDockerFleet(t *testing.T, what string, size int, mod func(*dockerFleet)) *dockerSetup {
	t.Helper()
	en := newEngine(t, defaultDockerHost, false)
	v1 := en.buildSample("v1", "1", "")
	f := dockerFleet{name: en.fleetName(what), size: size, image: en.repo() + ":1"}
	if mod != nil {
		mod(&f)
	}
	e := newDockerEnv(t, en)
	e.writeFleet("fleet.hcl", f.hcl())
	e.start()
	e.waitHealthy(f.name, size, v1, 60*time.Second)
	return &dockerSetup{e: e, en: en, fleet: f, v1: v1}
}

// rolloutSample is what one sample of a rollout saw.
type rolloutSample struct {
	servingCheck
	containers int // containers of the fleet on the engine, any state
	byImage    map[string]int
}

// sample lists the engine's containers of the fleet while it checks
// which instances are healthy and answering (see servingCheck).
func (s *dockerSetup) sample(t testing.TB) (rolloutSample, api.Fleet) {
	t.Helper()
	type listed struct {
		cs  []container.Summary
		err error
	}
	lc := make(chan listed, 1)
	go func() {
		cs, err := s.en.containers(s.fleet.name)
		lc <- listed{cs, err}
	}()
	r := rolloutSample{servingCheck: s.e.checkServing(s.fleet.name), byImage: map[string]int{}}
	l := <-lc
	if l.err != nil {
		t.Fatalf("list containers: %v", l.err)
	}
	r.containers = len(l.cs)
	for _, c := range l.cs {
		r.byImage[c.ImageID]++
	}
	return r, r.after
}

// ---- Benchmark reports ----

// percentile is the p-th (0 to 1) of ds.
func percentile(ds []time.Duration, p float64) time.Duration {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := int(float64(len(s)-1) * p)
	return s[i]
}

// report reports the p50, p95 and maximum of ds in milliseconds.
func report(b *testing.B, name string, ds []time.Duration) {
	b.ReportMetric(percentile(ds, 0.5).Seconds()*1000, name+"_p50_ms")
	b.ReportMetric(percentile(ds, 0.95).Seconds()*1000, name+"_p95_ms")
	b.ReportMetric(percentile(ds, 1).Seconds()*1000, name+"_max_ms")
}
