// Package e2e runs the real immutd binary against real instances: it
// builds the binary and the sample app images once, starts agents on
// loopback ports in temporary directories, and checks what an operator
// would see. Only loopback and processes the tests start are touched.
package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/immutd/immutd/internal/api"
	"github.com/immutd/immutd/internal/state"
)

var (
	binDir    string // holds immutd
	imagesDir string // holds sampleapp-v1, sampleapp-v2 bundles
	repoRoot  string
)

func TestMain(m *testing.M) {
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
	build := func(out string, ldflags string, pkg string) error {
		cmd := exec.Command("go", "build", "-trimpath", "-buildvcs=false", "-ldflags", ldflags, "-o", out, pkg)
		cmd.Dir = repoRoot
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if b, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("go build %s: %v\n%s", pkg, err, b)
		}
		return nil
	}
	// IMMUTD_E2E_BINARY runs the suite against another immutd binary, for
	// example a previous release, to show which tests it fails.
	if bin := os.Getenv("IMMUTD_E2E_BINARY"); bin != "" {
		if err := os.MkdirAll(binDir, 0o755); err != nil {
			return 0, err
		}
		if err := os.Symlink(bin, filepath.Join(binDir, "immutd")); err != nil {
			return 0, err
		}
	} else if err := build(filepath.Join(binDir, "immutd"), "-X github.com/immutd/immutd/internal/agent.Version=e2e", "./cmd/immutd"); err != nil {
		return 0, err
	}
	for _, v := range []string{"1", "2"} {
		dst := filepath.Join(imagesDir, "sampleapp-v"+v)
		if err := copyTree(filepath.Join(repoRoot, "configs", "images", "sampleapp-v"+v), dst); err != nil {
			return 0, err
		}
		if err := build(filepath.Join(dst, "bin", "sampleapp"), "-X main.version="+v+".0.0", "./cmd/sampleapp"); err != nil {
			return 0, err
		}
	}
	return m.Run(), nil
}

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

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
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
	// lastPass and passes count reconcile passes seen (passesSince).
	lastPass time.Time
	passes   int

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
}

func newEnv(t testing.TB, o envOpts) *env {
	t.Helper()
	dir := t.TempDir()
	if o.name == "" {
		o.name = "e2e"
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
log_level = "debug"
auto_drain_removed_fleets = %v
reconcile_interval = "500ms"
cluster {
  bind_addr = %q
%s
}
%s
`, o.name, e.dataDir, e.fleetsDir, e.httpAddr, o.autoDrain, e.raftAddr, o.cluster, o.extra)
	if err := os.WriteFile(e.cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	e.client = api.NewClient(e.httpAddr)
	t.Cleanup(e.cleanup)
	return e
}

// fleetFile is the HCL of a test fleet.
func fleetFile(name string, size int, version string, extra string) string {
	return fmt.Sprintf(`fleet %q {
  size     = %d
  provider = "local"
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
`, name, size, filepath.Join(imagesDir, "sampleapp-"+version), extra)
}

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

// processesUnder lists live processes whose cwd is under dir.
func processesUnder(dir string) []int {
	ents, _ := os.ReadDir("/proc")
	var out []int
	for _, d := range ents {
		pid, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		cwd, err := os.Readlink(filepath.Join("/proc", d.Name(), "cwd"))
		if err != nil || !strings.HasPrefix(cwd, dir+"/") {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", d.Name(), "stat"))
		if err == nil {
			if i := strings.LastIndexByte(string(stat), ')'); i > 0 && i+2 < len(stat) && (stat[i+2] == 'Z' || stat[i+2] == 'X') {
				continue
			}
		}
		out = append(out, pid)
	}
	return out
}

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

func (e *env) trystatus() (api.Status, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return e.client.Status(ctx)
}

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

func (e *env) fleet(name string) api.Fleet {
	e.t.Helper()
	for _, f := range e.status().Fleets {
		if f.Name == name {
			return f
		}
	}
	return api.Fleet{}
}

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

// waitFleetHealthy is waitHealthy on the status that read returns.
func (e *env) waitFleetHealthy(read func() (api.Status, error), name string, n int, digestPrefix string, timeout time.Duration, without ...string) api.Fleet {
	e.t.Helper()
	var f api.Fleet
	e.waitFor(fmt.Sprintf("%d healthy instances of %s", n, name), timeout, func() (bool, string) {
		st, err := read()
		if err != nil {
			return false, err.Error()
		}
		f = api.Fleet{}
		for _, x := range st.Fleets {
			if x.Name == name {
				f = x
			}
		}
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

func ids(f api.Fleet) map[string]bool {
	out := map[string]bool{}
	for _, in := range f.Instances {
		out[in.ID] = true
	}
	return out
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

func findEvent(evs []state.Event, action state.EventAction, instanceID string) *state.Event {
	for i := range evs {
		if evs[i].Action == action && (instanceID == "" || evs[i].InstanceID == instanceID) {
			return &evs[i]
		}
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

func stateOf(f api.Fleet, id string) string {
	for _, in := range f.Instances {
		if in.ID == id {
			return in.State
		}
	}
	return "gone"
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
