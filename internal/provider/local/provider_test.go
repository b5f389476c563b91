package local

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/immutd/immutd/internal/instance"
)

func TestLaunchRunsInstance(t *testing.T) {
	dir := t.TempDir()
	p, logs := newProvider(t, dir)
	digest := importBundle(t, p, makeBundle(t, "1.0.0"))
	obs := launch(t, p, "web-1", digest)

	root := filepath.Join(p.Dir(), "instances", "web-1")
	if obs.Phase != instance.Running || obs.ID != "web-1" || obs.Fleet != "web" ||
		obs.ImageDigest != digest || obs.TemplateHash != "tmpl-1" || obs.Location != root || obs.StartedAt.IsZero() {
		t.Fatalf("observed %+v", obs)
	}
	if !strings.HasPrefix(obs.Address, "127.0.0.1:") {
		t.Fatalf("address %q", obs.Address)
	}
	pid := pidOf(t, obs)
	code, body := httpGet(t, obs.Address, "/")
	if code != 200 {
		t.Fatalf("GET / = %d %q", code, body)
	}
	for _, want := range []string{
		"sampleapp " + sampleVersion, "instance: web-1", "fleet: web", "image: " + digest,
		`greeting = "hello from 1.0.0"`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("GET / body %q lacks %q", body, want)
		}
	}

	env := environOf(t, pid)
	_, port, _ := strings.Cut(obs.Address, ":")
	wantEnv := map[string]string{
		"HOME": root, "TMPDIR": filepath.Join(p.Dir(), "tmp", "web-1"), "PATH": basePATH,
		"APP_MODE": "test", "PORT": port, "IMMUTD_INSTANCE_ID": "web-1", "IMMUTD_FLEET": "web",
		"IMMUTD_IMAGE_DIGEST": digest,
	}
	if !reflect.DeepEqual(env, wantEnv) {
		t.Errorf("environment\n got %v\nwant %v", env, wantEnv)
	}
	if cwd, err := os.Readlink(fmt.Sprintf("/proc/%d/cwd", pid)); err != nil || cwd != root {
		t.Errorf("cwd = %q, %v", cwd, err)
	}
	st, err := readProcStat("/proc", pid)
	if err != nil || st.Session != pid || st.PGrp != pid {
		t.Errorf("process is not a session leader: %+v, %v", st, err)
	}
	m, err := p.readMeta("web-1")
	if err != nil || m.PID != pid || m.StartTicks != st.StartTicks || m.Executable != filepath.Join(root, "bin/sampleapp") {
		t.Errorf("meta = %+v, %v", m, err)
	}
	if got := listByID(t, p)["web-1"]; !reflect.DeepEqual(got, obs) {
		t.Errorf("List reports\n%+v\nLaunch returned\n%+v", got, obs)
	}
	if !hasLog(logs, "instance launched", "instance_id", "web-1") {
		t.Error("launch not logged")
	}
	// The instance logs go to logs/<id>.log.
	waitFor(t, "instance log", func() bool {
		b, _ := os.ReadFile(filepath.Join(p.Dir(), "logs", "web-1.log"))
		return strings.Contains(string(b), "listening on "+obs.Address)
	})
}

func TestRelaunchStartsNoSecondProcess(t *testing.T) {
	p, _ := newProvider(t, t.TempDir())
	digest := importBundle(t, p, makeBundle(t, "1.0.0"))
	first := launch(t, p, "web-1", digest)

	// Concurrent relaunches of the same id find the first instance.
	var wg sync.WaitGroup
	results := make([]instance.Observed, 8)
	errs := make([]error, 8)
	for i := range results {
		wg.Go(func() {
			results[i], errs[i] = p.Launch(t.Context(), instance.LaunchRequest{InstanceID: "web-1", Fleet: "web", ImageDigest: digest})
		})
	}
	wg.Wait()
	for i := range results {
		if errs[i] != nil || results[i].ProviderRef != first.ProviderRef || results[i].Phase != instance.Running {
			t.Fatalf("relaunch %d: %+v, %v", i, results[i], errs[i])
		}
	}
	if n := processesIn(t, first.Location); n != 1 {
		t.Fatalf("%d processes run in the instance root, want 1", n)
	}

	// A dead instance is reported, not restarted.
	if err := unix.Kill(pidOf(t, first), unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "exit", func() bool { return listByID(t, p)["web-1"].Phase == instance.Exited })
	again, err := p.Launch(t.Context(), instance.LaunchRequest{InstanceID: "web-1", Fleet: "web", ImageDigest: digest})
	if err != nil || again.Phase != instance.Exited || again.ProviderRef != first.ProviderRef {
		t.Fatalf("relaunch of exited instance: %+v, %v", again, err)
	}
	if n := processesIn(t, first.Location); n != 0 {
		t.Fatalf("relaunch started %d processes", n)
	}
}

func TestListReportsExit(t *testing.T) {
	p, _ := newProvider(t, t.TempDir())
	digest := importBundle(t, p, makeBundle(t, "1.0.0"))
	a := launch(t, p, "web-a", digest)
	b := launch(t, p, "web-b", digest)
	if err := unix.Kill(pidOf(t, a), unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "recorded exit", func() bool { return listByID(t, p)["web-a"].ExitReason == "signal: killed" })
	got := listByID(t, p)
	if got["web-a"].Phase != instance.Exited || got["web-b"].Phase != instance.Running || len(got) != 2 {
		t.Fatalf("List = %+v", got)
	}
	if got["web-b"].ProviderRef != b.ProviderRef {
		t.Fatalf("web-b pid changed: %+v", got["web-b"])
	}
	// Application exits are recorded with their status.
	c := launch(t, p, "web-c", digest, "-no-such-flag")
	waitFor(t, "exit status", func() bool { return listByID(t, p)["web-c"].ExitReason == "exit status 2" })
	if listByID(t, p)["web-c"].ProviderRef != c.ProviderRef {
		t.Fatal("pid of exited instance not reported")
	}
}

func TestTerminateGraceful(t *testing.T) {
	p, logs := newProvider(t, t.TempDir())
	digest := importBundle(t, p, makeBundle(t, "1.0.0"))
	obs := launch(t, p, "web-1", digest)
	httpGet(t, obs.Address, "/healthz")
	pid := pidOf(t, obs)
	if err := os.WriteFile(p.LogPath("web-1")+".1", []byte("rotated\n"), 0o640); err != nil {
		t.Fatal(err)
	}

	if err := p.Terminate(t.Context(), "web-1", time.Minute); err != nil {
		t.Fatal(err)
	}
	if !hasLog(logs, "instance terminated", "stop_signal", "SIGTERM") {
		t.Fatalf("not stopped by SIGTERM: %v", logs.FilterMessage("instance terminated").All())
	}
	if st, err := readProcStat("/proc", pid); err == nil && st.live() {
		t.Fatalf("process still alive: %+v", st)
	}
	for _, path := range []string{obs.Location, p.metaPath("web-1"), p.LogPath("web-1"), p.LogPath("web-1") + ".1",
		p.instanceTmp("web-1"), p.portPath(portOf(t, obs))} {
		if exists(path) {
			t.Errorf("%s left behind", path)
		}
	}
	if got := listByID(t, p); len(got) != 0 {
		t.Fatalf("List after terminate = %+v", got)
	}
	// The reaper locks once more after the terminate, then the lock file goes.
	waitFor(t, "no lock file", func() bool { return !exists(p.lockPath("web-1")) })
	// Idempotent: again, and an id that never existed.
	for _, id := range []string{"web-1", "never-was"} {
		if err := p.Terminate(t.Context(), id, time.Second); err != nil {
			t.Fatalf("terminate %s: %v", id, err)
		}
	}
	if err := p.Terminate(t.Context(), "../escape", time.Second); err == nil {
		t.Fatal("bad id accepted")
	}
}

func TestTerminateKillsAfterGrace(t *testing.T) {
	p, logs := newProvider(t, t.TempDir())
	digest := importBundle(t, p, makeBundle(t, "1.0.0"))
	obs := launch(t, p, "web-1", digest, "-ignore-sigterm")
	httpGet(t, obs.Address, "/healthz") // signal handler installed
	pid := pidOf(t, obs)

	if err := p.Terminate(t.Context(), "web-1", 200*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if !hasLog(logs, "instance terminated", "stop_signal", "SIGKILL") {
		t.Fatalf("not killed: %v", logs.FilterMessage("instance terminated").All())
	}
	if st, err := readProcStat("/proc", pid); err == nil && st.live() {
		t.Fatalf("process still alive: %+v", st)
	}
	if exists(obs.Location) || exists(p.metaPath("web-1")) {
		t.Fatal("files left behind")
	}
}

func TestTerminateHonoursContext(t *testing.T) {
	p, _ := newProvider(t, t.TempDir())
	digest := importBundle(t, p, makeBundle(t, "1.0.0"))
	obs := launch(t, p, "web-1", digest, "-ignore-sigterm")
	httpGet(t, obs.Address, "/healthz")

	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	err := p.Terminate(ctx, "web-1", time.Hour)
	if !errors.Is(err, context.DeadlineExceeded) || !strings.HasPrefix(err.Error(), "local: terminate web-1: ") {
		t.Fatalf("err = %v", err)
	}
	// Still recorded and running; a retry finishes the job.
	if got := listByID(t, p)["web-1"]; got.Phase != instance.Running || got.ProviderRef != obs.ProviderRef {
		t.Fatalf("after cancelled terminate: %+v", got)
	}
	if err := p.Terminate(t.Context(), "web-1", 0); err != nil {
		t.Fatal(err)
	}
	if len(listByID(t, p)) != 0 || processesIn(t, obs.Location) != 0 {
		t.Fatal("retry did not finish the terminate")
	}
}

func TestTerminateStopsWholeSession(t *testing.T) {
	p, _ := newProvider(t, t.TempDir())
	digest := importBundle(t, p, makeBundle(t, "1.0.0"))
	// A process that starts a child in a process group of its own (as
	// shell job control would) and waits for it.
	req := instance.LaunchRequest{InstanceID: "sh-1", Fleet: "web", ImageDigest: digest}
	req.Launch.Command = []string{os.Args[0]}
	req.Launch.Env = map[string]string{helperEnv: "group-parent"}
	obs, err := p.Launch(t.Context(), req)
	if err != nil {
		t.Fatal(err)
	}
	pid := pidOf(t, obs)
	killOnCleanup(t, pid)
	t.Cleanup(func() { _ = p.Terminate(context.Background(), "sh-1", 0) })
	var members []procStat
	waitFor(t, "child process", func() bool {
		members, err = sessionMembers("/proc", pid)
		return err == nil && len(members) == 2
	})
	for _, m := range members {
		if m.PID != pid {
			killOnCleanup(t, m.PID)
			if m.PGrp == pid {
				t.Fatalf("child %d is in the leader's process group; the test needs its own", m.PID)
			}
		}
	}
	if err := p.Terminate(t.Context(), "sh-1", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if left, _ := sessionMembers("/proc", pid); len(left) != 0 {
		t.Fatalf("session members left: %+v", left)
	}
}

func TestSurvivesAgentRestart(t *testing.T) {
	dir := t.TempDir()
	bundle := makeBundle(t, "1.0.0")
	// The first agent is another process that launches and exits, so the
	// instance is not a child of this one.
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), agentEnv+"="+dir, agentBundleEnv+"="+bundle)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	var first instance.Observed
	if jerr := json.Unmarshal(out, &first); jerr == nil && first.ProviderRef != "" {
		pid, _ := strconv.Atoi(first.ProviderRef)
		killOnCleanup(t, pid)
	}
	if err != nil {
		t.Fatalf("agent: %v\n%s", err, stderr.String())
	}
	pid := pidOf(t, first)
	if st, err := readProcStat("/proc", pid); err != nil || !st.live() || st.PPID == os.Getpid() {
		t.Fatalf("instance process: %+v %v (test pid %d)", st, err, os.Getpid())
	}

	p, logs := newProvider(t, dir)
	got := listByID(t, p)["web-1"]
	if got.Phase != instance.Running || got.ProviderRef != first.ProviderRef || got.Address != first.Address {
		t.Fatalf("after restart: %+v, before: %+v", got, first)
	}
	if code, _ := httpGet(t, got.Address, "/healthz"); code != 200 {
		t.Fatalf("healthz = %d", code)
	}
	if f, err := p.Inspect(t.Context(), got, nil); err != nil || f != nil {
		t.Fatalf("inspect after restart: %+v, %v", f, err)
	}
	if err := p.Terminate(t.Context(), "web-1", time.Minute); err != nil {
		t.Fatal(err)
	}
	if !hasLog(logs, "instance terminated", "stop_signal", "SIGTERM") {
		t.Fatal("not stopped by SIGTERM")
	}
	if st, err := readProcStat("/proc", pid); err == nil && st.live() {
		t.Fatalf("process still alive: %+v", st)
	}
	if len(listByID(t, p)) != 0 {
		t.Fatal("instance still listed")
	}
}

func TestListReportsGoneProcessOfEarlierAgent(t *testing.T) {
	dir := t.TempDir()
	p, _ := newProvider(t, dir)
	digest := importBundle(t, p, makeBundle(t, "1.0.0"))
	// Metadata of a process that no longer exists (pid from a finished child).
	dead := exec.Command("/bin/true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	m := &meta{ID: "old-1", Fleet: "web", ImageDigest: digest, PID: dead.Process.Pid, StartTicks: 1, Address: "127.0.0.1:1"}
	if err := p.writeMeta(m); err != nil {
		t.Fatal(err)
	}
	got := listByID(t, p)["old-1"]
	if got.Phase != instance.Exited || (got.ExitReason != reasonGone && got.ExitReason != reasonPIDReused) {
		t.Fatalf("List = %+v", got)
	}
	// Same pid as a live process but another start time: pid reused.
	m.PID = os.Getpid()
	if err := p.writeMeta(m); err != nil {
		t.Fatal(err)
	}
	if got := listByID(t, p)["old-1"]; got.Phase != instance.Exited || got.ExitReason != reasonPIDReused {
		t.Fatalf("List = %+v", got)
	}
	// Terminate must not touch the unrelated process that has the pid now.
	if err := p.Terminate(t.Context(), "old-1", 0); err != nil {
		t.Fatal(err)
	}
	if exists(p.metaPath("old-1")) {
		t.Fatal("meta left behind")
	}
}

func TestListSurvivesUnreadableMeta(t *testing.T) {
	p, logs := newProvider(t, t.TempDir())
	digest := importBundle(t, p, makeBundle(t, "1.0.0"))
	launch(t, p, "web-1", digest)
	if err := os.WriteFile(p.metaPath("broken"), []byte(`{"id": "brok`), 0o640); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(p.Dir(), "meta", "not an id.json"), []byte(`{}`), 0o640); err != nil {
		t.Fatal(err)
	}
	got := listByID(t, p)
	if len(got) != 2 || got["web-1"].Phase != instance.Running {
		t.Fatalf("List = %+v", got)
	}
	if b := got["broken"]; b.Phase != instance.Exited || !strings.HasPrefix(b.ExitReason, "unreadable metadata: ") {
		t.Fatalf("broken = %+v", b)
	}
	if !hasLog(logs, "unreadable instance metadata", "instance_id", "broken") {
		t.Fatal("unreadable metadata not logged")
	}
	if err := p.Terminate(t.Context(), "broken", 0); err != nil {
		t.Fatal(err)
	}
	if _, ok := listByID(t, p)["broken"]; ok {
		t.Fatal("broken instance still listed after terminate")
	}
}

func TestInterruptedLaunchIsRecovered(t *testing.T) {
	p, _ := newProvider(t, t.TempDir())
	digest := importBundle(t, p, makeBundle(t, "1.0.0"))
	// Metadata written, nothing started: reported as exited, removable.
	if err := p.writeMeta(&meta{ID: "web-1", Fleet: "web", ImageDigest: digest}); err != nil {
		t.Fatal(err)
	}
	if got := listByID(t, p)["web-1"]; got.Phase != instance.Exited || got.ExitReason != reasonNeverLaunch {
		t.Fatalf("List = %+v", got)
	}
	// Process started but its pid never recorded: found by its root.
	root := p.instanceRoot("web-2")
	if err := os.MkdirAll(root, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := p.writeMeta(&meta{ID: "web-2", Fleet: "web", ImageDigest: digest}); err != nil {
		t.Fatal(err)
	}
	sleeper := exec.Command("/bin/sleep", "300")
	sleeper.Dir = root
	sleeper.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := sleeper.Start(); err != nil {
		t.Fatal(err)
	}
	reaped := make(chan struct{})
	go func() { _ = sleeper.Wait(); close(reaped) }()
	t.Cleanup(func() {
		_ = sleeper.Process.Kill()
		<-reaped
	})
	got := listByID(t, p)["web-2"]
	if got.Phase != instance.Running || got.ProviderRef != strconv.Itoa(sleeper.Process.Pid) {
		t.Fatalf("List = %+v, sleeper pid %d", got, sleeper.Process.Pid)
	}
	for _, id := range []string{"web-1", "web-2"} {
		if err := p.Terminate(t.Context(), id, 5*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case <-reaped:
	case <-time.After(10 * time.Second):
		t.Fatal("recovered process not stopped")
	}
	if len(listByID(t, p)) != 0 {
		t.Fatal("instances still listed")
	}
}

func TestLaunchFailuresLeaveNothing(t *testing.T) {
	p, _ := newProvider(t, t.TempDir())
	digest := importBundle(t, p, makeBundle(t, "1.0.0"))
	missing := "sha256:" + strings.Repeat("ab", 32)
	cases := []struct {
		name string
		req  instance.LaunchRequest
		want string
	}{
		{"image not imported", instance.LaunchRequest{InstanceID: "x-1", ImageDigest: missing}, "is not in the store (import it first)"},
		{"bad digest", instance.LaunchRequest{InstanceID: "x-1", ImageDigest: "latest"}, `image digest "latest" is not of the form`},
		{"bad id", instance.LaunchRequest{InstanceID: "../x", ImageDigest: digest}, `instance id "../x"`},
		{"command not found", func() instance.LaunchRequest {
			r := instance.LaunchRequest{InstanceID: "x-1", ImageDigest: digest}
			r.Launch.Command = []string{"no-such-command-anywhere"}
			return r
		}(), `command "no-such-command-anywhere" is neither in the instance root nor in PATH`},
		{"not executable", func() instance.LaunchRequest {
			r := instance.LaunchRequest{InstanceID: "x-1", ImageDigest: digest}
			r.Launch.Command = []string{"config/app.conf"}
			return r
		}(), "start config/app.conf: "},
		{"bad env", func() instance.LaunchRequest {
			r := instance.LaunchRequest{InstanceID: "x-1", ImageDigest: digest}
			r.Launch.Env = map[string]string{"A=B": "c"}
			return r
		}(), `launch env "A=B"`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := p.Launch(t.Context(), tc.req)
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), "local: launch "+tc.req.InstanceID+": ") {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
			for _, sub := range []string{"meta", "instances", "logs", "tmp", "ports", "locks"} {
				des, err := os.ReadDir(filepath.Join(p.Dir(), sub))
				if err != nil || len(des) != 0 {
					t.Errorf("%s: %d entries left, %v", sub, len(des), err)
				}
			}
		})
	}
}

func TestLaunchRejectsCorruptedStore(t *testing.T) {
	p, _ := newProvider(t, t.TempDir())
	digest := importBundle(t, p, makeBundle(t, "1.0.0"))
	if err := os.WriteFile(filepath.Join(p.imageDir(digest), "config/app.conf"), []byte("tampered"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := p.Launch(t.Context(), instance.LaunchRequest{InstanceID: "web-1", ImageDigest: digest})
	if err == nil || !strings.Contains(err.Error(), "is corrupted") {
		t.Fatalf("err = %v", err)
	}
	if exists(p.metaPath("web-1")) || exists(p.instanceRoot("web-1")) {
		t.Fatal("failed launch left files")
	}
}

func TestInspect(t *testing.T) {
	p, _ := newProvider(t, t.TempDir())
	digest := importBundle(t, p, makeBundle(t, "1.0.0"))
	obs := launch(t, p, "web-1", digest)
	root := obs.Location
	httpGet(t, obs.Address, "/healthz")

	inspect := func(ignore ...string) *instance.Finding {
		t.Helper()
		f, err := p.Inspect(t.Context(), obs, ignore)
		if err != nil {
			t.Fatal(err)
		}
		return f
	}
	if f := inspect(); f != nil {
		t.Fatalf("fresh instance drifted: %+v", f)
	}

	writeTree(t, root, map[string]string{
		"config/app.conf": "greeting = \"pwned\"\n",
		"evil.sh":         "#!/bin/sh\n",
		"logs/app.log":    "log line",
		"cache/a/b":       "cached",
		"x/y/z.tmp":       "tmp",
	})
	if err := os.Chmod(filepath.Join(root, "manifest.json"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(root, "bin/sampleapp")); err != nil {
		t.Fatal(err)
	}
	f := inspect("logs", "cache/**", "**/*.tmp")
	if f == nil || f.Kind != instance.DriftMutated {
		t.Fatalf("finding = %+v", f)
	}
	// One item per path, in path order.
	want := []string{"removed bin/sampleapp", "modified config/app.conf", "added evil.sh", "mode manifest.json 0644->0755", "added x", "added x/y"}
	if !reflect.DeepEqual(f.Evidence, want) {
		t.Fatalf("evidence\n got %q\nwant %q", f.Evidence, want)
	}
	// Ignoring everything that changed gives a clean result.
	if f := inspect("config/app.conf", "evil.sh", "x", "logs", "cache", "bin", "manifest.json"); f != nil {
		t.Fatalf("everything ignored, still %+v", f)
	}
	// Without ignores, the ignored paths count too.
	if f := inspect(); f == nil || !slices.Contains(f.Evidence, "added logs/app.log") || !slices.Contains(f.Evidence, "added cache/a/b") {
		t.Fatalf("without ignores: %+v", f)
	}
	if _, err := p.Inspect(t.Context(), obs, []string{"[bad"}); err == nil {
		t.Fatal("bad pattern accepted")
	}
}

func TestInspectCapsEvidence(t *testing.T) {
	p, _ := newProvider(t, t.TempDir())
	digest := importBundle(t, p, makeBundle(t, "1.0.0"))
	obs := launch(t, p, "web-1", digest)
	files := map[string]string{}
	for i := range 25 {
		files[fmt.Sprintf("junk/%02d", i)] = "x"
	}
	writeTree(t, obs.Location, files)
	f, err := p.Inspect(t.Context(), obs, nil)
	if err != nil {
		t.Fatal(err)
	}
	if f == nil || len(f.Evidence) != instance.MaxEvidence+1 || f.Evidence[instance.MaxEvidence] != "... and 6 more" || f.Evidence[0] != "added junk" {
		t.Fatalf("finding = %+v", f)
	}
}

func TestInspectTypeChangeAndUnknown(t *testing.T) {
	p, _ := newProvider(t, t.TempDir())
	digest := importBundle(t, p, makeBundle(t, "1.0.0"))
	obs := launch(t, p, "web-1", digest)
	conf := filepath.Join(obs.Location, "config/app.conf")
	if err := os.Remove(conf); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/etc/hostname", conf); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mkfifo(filepath.Join(obs.Location, "pipe"), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := p.Inspect(t.Context(), obs, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"type config/app.conf file->symlink", "added pipe"}
	if f == nil || !reflect.DeepEqual(f.Evidence, want) {
		t.Fatalf("finding = %+v, want %q", f, want)
	}
	if _, err := p.Inspect(t.Context(), instance.Observed{ID: "nope", ImageDigest: digest}, nil); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unknown instance: %v", err)
	}
}

func TestSampleAppFailAfter(t *testing.T) {
	p, _ := newProvider(t, t.TempDir())
	digest := importBundle(t, p, makeBundle(t, "1.0.0"))
	obs := launch(t, p, "web-1", digest, "-fail-after", "1ms")
	waitFor(t, "failing health", func() bool {
		code, _ := httpGet(t, obs.Address, "/healthz")
		return code == 500
	})
}

// TestNewKeepsYoungLeftovers: agents of one cluster may share the
// directory, so New removes only staging directories old enough that no
// import can still be running.
func TestNewKeepsYoungLeftovers(t *testing.T) {
	dir := t.TempDir()
	p, _ := newProvider(t, dir)
	oldStage := filepath.Join(p.imagesDir, stagingPrefix+"old")
	youngStage := filepath.Join(p.imagesDir, stagingPrefix+"young")
	for _, d := range []string{oldStage, youngStage} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	past := time.Now().Add(-2 * leftoverAge)
	if err := os.Chtimes(oldStage, past, past); err != nil {
		t.Fatal(err)
	}
	newProvider(t, dir)
	if _, err := os.Stat(oldStage); !os.IsNotExist(err) {
		t.Errorf("old staging directory kept: %v", err)
	}
	if _, err := os.Stat(youngStage); err != nil {
		t.Errorf("young staging directory removed: %v", err)
	}
}
