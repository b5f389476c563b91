package local

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
	"golang.org/x/sys/unix"

	"github.com/immutd/immutd/internal/instance"
)

// sampleBin is cmd/sampleapp, built once for the test binary.
var sampleBin string

// sampleVersion is stamped into sampleBin.
const sampleVersion = "test-1.0"

// Environment of the test binary re-executed as a short-lived agent.
const (
	agentEnv       = "IMMUTD_LOCAL_TEST_AGENT_DIR"
	agentBundleEnv = "IMMUTD_LOCAL_TEST_AGENT_BUNDLE"
)

// helperEnv makes the test binary act as an instance command:
// "group-parent" starts a "sleeper" child in a process group of its own
// and waits for it; "sleeper" sleeps for a bounded time; "spew" writes
// lines to stdout as fast as it can, for a bounded time; "exit-on-usr1"
// writes "ready" to stdout once it handles SIGUSR1, then exits with the
// status in helperCodeEnv when it gets one (bounded).
const helperEnv = "IMMUTD_LOCAL_TEST_HELPER"

// helperCodeEnv is the exit status of the "exit-on-usr1" helper.
const helperCodeEnv = "IMMUTD_LOCAL_TEST_HELPER_CODE"

func TestMain(m *testing.M) {
	if dir := os.Getenv(agentEnv); dir != "" {
		os.Exit(runAgent(dir, os.Getenv(agentBundleEnv)))
	}
	switch os.Getenv(helperEnv) {
	case "group-parent":
		child := exec.Command(os.Args[0])
		child.Env = append(os.Environ(), helperEnv+"=sleeper")
		child.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		if err := child.Run(); err != nil {
			os.Exit(1)
		}
		os.Exit(0)
	case "sleeper":
		time.Sleep(5 * time.Minute)
		os.Exit(0)
	case "exit-on-usr1":
		code, _ := strconv.Atoi(os.Getenv(helperCodeEnv))
		usr1 := make(chan os.Signal, 1)
		signal.Notify(usr1, syscall.SIGUSR1)
		fmt.Println("ready")
		select {
		case <-usr1:
			os.Exit(code)
		case <-time.After(5 * time.Minute):
			os.Exit(0)
		}
	case "spew":
		line := []byte(strings.Repeat("x", 99) + "\n")
		for deadline := time.Now().Add(5 * time.Minute); time.Now().Before(deadline); {
			if _, err := os.Stdout.Write(line); err != nil {
				os.Exit(1)
			}
		}
		os.Exit(0)
	}
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	tmp, err := os.MkdirTemp("", "immutd-local-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(tmp)
	sampleBin = filepath.Join(tmp, "sampleapp")
	goBin, err := exec.LookPath("go")
	if err != nil {
		fmt.Fprintln(os.Stderr, "go toolchain needed to build cmd/sampleapp:", err)
		return 1
	}
	build := exec.Command(goBin, "build", "-o", sampleBin, "-ldflags", "-X main.version="+sampleVersion,
		"github.com/immutd/immutd/cmd/sampleapp")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build sampleapp: %v\n%s", err, out)
		return 1
	}
	return m.Run()
}

// runAgent plays an agent that imports, launches "web-1" and exits, so
// the instance outlives the process that started it.
func runAgent(dir, bundle string) int {
	ctx := context.Background()
	p, err := New(Options{Dir: dir})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	digest, err := p.Import(ctx, bundle)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	obs, err := p.Launch(ctx, instance.LaunchRequest{InstanceID: "web-1", Fleet: "web", ImageDigest: digest})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if err := json.NewEncoder(os.Stdout).Encode(obs); err != nil {
		return 1
	}
	return 0
}

// makeBundle builds a sampleapp bundle in a temp dir.
func makeBundle(t *testing.T, version string) string {
	t.Helper()
	dir := t.TempDir()
	man := fmt.Sprintf(`{"name": "sampleapp", "version": %q, "entrypoint": ["bin/sampleapp"]}`, version)
	writeTree(t, dir, map[string]string{
		"manifest.json":   man,
		"config/app.conf": fmt.Sprintf("greeting = \"hello from %s\"\n", version),
	})
	bin, err := os.ReadFile(sampleBin)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "bin", "sampleapp"), bin, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// makeShellBundle builds a bundle whose entrypoint is a shell script
// that sleeps (bounded): a cheap instance for tests that launch many.
func makeShellBundle(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	writeTree(t, dir, map[string]string{
		"manifest.json": `{"name": "sleeper", "version": "1", "entrypoint": ["bin/app"]}`,
	})
	if err := os.MkdirAll(filepath.Join(dir, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "bin", "app"), []byte("#!/bin/sh\nexec sleep 300\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

func newProvider(t *testing.T, dir string) (*Provider, *observer.ObservedLogs) {
	t.Helper()
	return newProviderWith(t, Options{Dir: dir})
}

func newProviderWith(t *testing.T, opts Options) (*Provider, *observer.ObservedLogs) {
	t.Helper()
	core, logs := observer.New(zap.DebugLevel)
	opts.Logger = zap.New(core)
	p, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	return p, logs
}

// setHook installs a test hook until the test ends.
func setHook[F any](t *testing.T, h interface{ Store(*F) }, f F) {
	t.Helper()
	h.Store(&f)
	t.Cleanup(func() { h.Store(nil) })
}

// dirEntries lists the names in dir.
func dirEntries(t *testing.T, dir string) []string {
	t.Helper()
	des, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, de := range des {
		names = append(names, de.Name())
	}
	return names
}

func importBundle(t *testing.T, p *Provider, bundle string) string {
	t.Helper()
	d, err := p.Import(t.Context(), bundle)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// launch launches an instance and makes sure it is gone after the test,
// even if the test fails before terminating it.
func launch(t *testing.T, p *Provider, id, digest string, args ...string) instance.Observed {
	t.Helper()
	req := instance.LaunchRequest{
		InstanceID:   id,
		Fleet:        "web",
		ImageDigest:  digest,
		TemplateHash: "tmpl-1",
		Launch:       launchArgs(args...),
	}
	obs, err := p.Launch(t.Context(), req)
	if pid, _ := strconv.Atoi(obs.ProviderRef); pid > 0 {
		killOnCleanup(t, pid)
	}
	t.Cleanup(func() {
		if err := p.Terminate(context.Background(), id, 0); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	return obs
}

func launchArgs(args ...string) (l instance.Launch) {
	l.Args = args
	l.Env = map[string]string{"APP_MODE": "test", "PORT": "1"}
	return l
}

// killOnCleanup SIGKILLs the session of pid when the test ends, if that
// process (same start time) still exists.
func killOnCleanup(t *testing.T, pid int) {
	st, err := readProcStat("/proc", pid)
	if err != nil {
		return
	}
	t.Cleanup(func() {
		now, err := readProcStat("/proc", pid)
		if err == nil && now.StartTicks == st.StartTicks {
			_ = unix.Kill(-pid, unix.SIGKILL)
			_ = unix.Kill(pid, unix.SIGKILL)
		}
	})
}

// httpGet fetches http://addr/path, retrying (bounded) until the server answers.
func httpGet(t *testing.T, addr, path string) (int, string) {
	t.Helper()
	client := &http.Client{Timeout: 2 * time.Second}
	var lastErr error
	for range 400 {
		resp, err := client.Get("http://" + addr + path)
		if err == nil {
			body, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err == nil {
				return resp.StatusCode, string(body)
			}
		}
		lastErr = err
		time.Sleep(25 * time.Millisecond)
	}
	t.Fatalf("GET http://%s%s: %v", addr, path, lastErr)
	return 0, ""
}

// waitFor polls cond (bounded) and fails the test if it never holds.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for range 500 {
		if cond() {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("timed out waiting for %s", what)
}

func listByID(t *testing.T, p *Provider) map[string]instance.Observed {
	t.Helper()
	all, err := p.List(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]instance.Observed{}
	for _, o := range all {
		out[o.ID] = o
	}
	return out
}

func pidOf(t *testing.T, obs instance.Observed) int {
	t.Helper()
	pid, err := strconv.Atoi(obs.ProviderRef)
	if err != nil || pid <= 0 {
		t.Fatalf("provider ref %q is not a pid", obs.ProviderRef)
	}
	return pid
}

// processesIn counts live session leaders whose working directory is root.
func processesIn(t *testing.T, root string) int {
	t.Helper()
	all, err := scanProcs("/proc")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, st := range all {
		if !st.live() || st.Session != st.PID {
			continue
		}
		if cwd, err := os.Readlink(fmt.Sprintf("/proc/%d/cwd", st.PID)); err == nil && cwd == root {
			n++
		}
	}
	return n
}

func environOf(t *testing.T, pid int) map[string]string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
	if err != nil {
		t.Fatal(err)
	}
	env := map[string]string{}
	for _, kv := range bytes.Split(b, []byte{0}) {
		if k, v, ok := strings.Cut(string(kv), "="); ok {
			env[k] = v
		}
	}
	return env
}

func hasLog(logs *observer.ObservedLogs, msg, key, value string) bool {
	for _, e := range logs.FilterMessage(msg).All() {
		if v, ok := e.ContextMap()[key]; ok && fmt.Sprint(v) == value {
			return true
		}
	}
	return false
}

func exists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}
