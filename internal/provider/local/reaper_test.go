package local

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/immutd/immutd/internal/instance"
)

// TestOneReaperForAllChildren launches many instances and checks that
// they cost no goroutine (and no OS thread) each, and that every exit is
// still reaped, recorded with the reason os/exec would give, and leaves
// no zombie.
func TestOneReaperForAllChildren(t *testing.T) {
	const n = 50
	// Goroutines and threads the provider may add whatever the number of
	// instances: the reaper, and what the runtime starts on its own.
	const slackGoroutines, slackThreads = 5, n / 2

	p, _ := newProvider(t, t.TempDir())
	digest := importBundle(t, p, makeShellBundle(t))
	goroutines, threads := runtime.NumGoroutine(), osThreads(t)

	type inst struct {
		id   string
		pid  int
		want string // the exit reason
	}
	insts := make([]inst, n)
	for i := range insts {
		id := fmt.Sprintf("many-%d", i)
		req := instance.LaunchRequest{InstanceID: id, Fleet: "many", ImageDigest: digest}
		req.Launch.Command = []string{os.Args[0]}
		req.Launch.Env = map[string]string{helperEnv: "exit-on-usr1", helperCodeEnv: strconv.Itoa(1 + i%7)}
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
		insts[i] = inst{id: id, pid: pidOf(t, obs), want: fmt.Sprintf("exit status %d", 1+i%7)}
		if i%2 == 0 {
			insts[i].want = "signal: killed"
		}
	}
	for _, in := range insts {
		waitFor(t, in.id+" ready", func() bool {
			b, err := os.ReadFile(p.LogPath(in.id))
			return err == nil && bytes.Contains(b, []byte("ready\n"))
		})
	}
	g, th := runtime.NumGoroutine(), osThreads(t)
	t.Logf("%d instances running: goroutines %d -> %d, OS threads %d -> %d", n, goroutines, g, threads, th)
	if g > goroutines+slackGoroutines {
		t.Errorf("goroutines grew from %d to %d with %d instances", goroutines, g, n)
	}
	if th > threads+slackThreads {
		t.Errorf("OS threads grew from %d to %d with %d instances", threads, th, n)
	}

	for _, in := range insts {
		sig := unix.SIGUSR1
		if in.want == "signal: killed" {
			sig = unix.SIGKILL
		}
		if err := unix.Kill(in.pid, sig); err != nil {
			t.Fatal(err)
		}
	}
	for _, in := range insts {
		waitFor(t, in.id+" exit recorded", func() bool {
			o := listByID(t, p)[in.id]
			return o.Phase == instance.Exited && o.ExitReason != reasonGone && o.ExitReason != reasonZombie
		})
		if got := listByID(t, p)[in.id]; got.ExitReason != in.want {
			t.Errorf("%s: exit reason %q, want %q", in.id, got.ExitReason, in.want)
		}
	}
	for _, in := range insts {
		st, err := readProcStat("/proc", in.pid)
		switch {
		case errors.Is(err, errNoProcess):
		case err != nil:
			t.Errorf("%s: %v", in.id, err)
		case st.PPID == os.Getpid() && !st.live():
			t.Errorf("%s: process %d left as a zombie (state %c)", in.id, in.pid, st.State)
		}
	}
	if z := zombieChildren(t); len(z) > 0 {
		t.Errorf("zombie children left: %v", z)
	}
	p.mu.Lock()
	left := len(p.children)
	p.mu.Unlock()
	if left != 0 {
		t.Errorf("%d children still registered after every exit was reaped", left)
	}
	// The exits are recorded, and nothing stays behind for them.
	waitFor(t, "goroutines back", func() bool { return runtime.NumGoroutine() <= goroutines+slackGoroutines })
}

// TestExitReasonMatchesOSExec: the reaper reads an exit as os/exec's
// ProcessState.String does, which is what the provider reported when it
// waited with exec.Cmd.
func TestExitReasonMatchesOSExec(t *testing.T) {
	for _, script := range []string{"exit 0", "exit 3", "exit 255", "kill -KILL $$", "kill -TERM $$", "kill -INT $$"} {
		cmd := exec.Command("/bin/sh", "-c", script)
		err := cmd.Run()
		var ee *exec.ExitError
		if err != nil && !errors.As(err, &ee) {
			t.Fatalf("%s: %v", script, err)
		}
		ws := cmd.ProcessState.Sys().(syscall.WaitStatus)
		if got, want := exitReason(ws), cmd.ProcessState.String(); got != want {
			t.Errorf("%s: exitReason = %q, os/exec says %q", script, got, want)
		}
	}
	// A core dump, which a test cannot count on producing (ulimit -c,
	// core_pattern): status 0x80 | signal.
	if got, want := exitReason(syscall.WaitStatus(0x80|uint32(syscall.SIGABRT))), "signal: aborted (core dumped)"; got != want {
		t.Errorf("core dump: %q, want %q", got, want)
	}
	if got, want := exitReason(syscall.WaitStatus(0x80|uint32(syscall.SIGSEGV))), "signal: segmentation fault (core dumped)"; got != want {
		t.Errorf("core dump: %q, want %q", got, want)
	}
}

// osThreads is the number of OS threads of this process.
func osThreads(t *testing.T) int {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, "Threads:"); ok {
			n, err := strconv.Atoi(strings.TrimSpace(v))
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatal("no Threads: line in /proc/self/status")
	return 0
}

// zombieChildren returns the pids of this process's children that are
// zombies.
func zombieChildren(t *testing.T) []int {
	t.Helper()
	all, err := scanProcs("/proc")
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.Fatal(err)
	}
	var out []int
	for _, st := range all {
		if st.PPID == os.Getpid() && !st.live() {
			out = append(out, st.PID)
		}
	}
	return out
}

// TestWatchHearsOfExits: Watch notifies once a child's exit is recorded,
// so the pass it triggers sees the instance exited, and returns when its
// context ends.
func TestWatchHearsOfExits(t *testing.T) {
	p, _ := newProvider(t, t.TempDir())
	digest := importBundle(t, p, makeShellBundle(t))
	ctx, cancel := context.WithCancel(t.Context())
	notified := make(chan instance.Observed, 16)
	returned := make(chan struct{})
	go func() {
		defer close(returned)
		p.Watch(ctx, func() {
			all, err := p.List(context.Background())
			if err != nil {
				t.Error(err)
			}
			for _, o := range all {
				notified <- o
			}
		})
	}()
	waitFor(t, "Watch to register", func() bool {
		p.mu.Lock()
		defer p.mu.Unlock()
		return len(p.watchers) == 1
	})
	obs := launch(t, p, "web-1", digest)
	if err := unix.Kill(pidOf(t, obs), unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	select {
	case o := <-notified:
		if o.ID != "web-1" || o.Phase != instance.Exited || o.ExitReason != "signal: killed" {
			t.Fatalf("listed when notified: %+v", o)
		}
	case <-time.After(time.Minute):
		t.Fatal("no notification of the exit")
	}
	cancel()
	select {
	case <-returned:
	case <-time.After(time.Minute):
		t.Fatal("Watch did not return when its context ended")
	}
	p.mu.Lock()
	left := len(p.watchers)
	p.mu.Unlock()
	if left != 0 {
		t.Fatalf("%d watchers left", left)
	}
}
