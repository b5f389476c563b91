package probe

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/immutd/immutd/internal/state"
)

// script writes an executable shell script into a temporary directory
// and returns its path.
func script(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "check.sh")
	if err := os.WriteFile(p, []byte("#!/bin/sh\n"+body), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func fastExec(name string, command ...string) state.Check {
	return state.Check{
		Name: name, Kind: KindExec, Command: command,
		Interval: 50 * time.Millisecond, Timeout: 5 * time.Second,
		HealthyThreshold: 1, UnhealthyThreshold: 2, StartupTimeout: time.Minute,
	}
}

func TestExecPassesAndFails(t *testing.T) {
	dir := t.TempDir()
	sh := script(t, `if [ -e "$1/fail-$IMMUTD_INSTANCE_ID" ]; then
  echo "failing: $IMMUTD_INSTANCE_ID of $IMMUTD_FLEET at $IMMUTD_ADDRESS"
  echo "see the log" >&2
  exit 3
fi
echo ok
`)
	p, w := realProber(t, Options{})
	c := fastExec("script", sh, dir)
	p.Set([]Target{
		{InstanceID: "web-1", Fleet: "web", Address: "127.0.0.1:4012", Checks: []state.Check{c}},
		{InstanceID: "web-2", Fleet: "web", Address: "127.0.0.1:4013", Checks: []state.Check{c}},
	})
	v := w.await(t, "web-1", Healthy)
	if st := v.Checks["script"]; st.Kind != KindExec || st.Last.Detail != "exit status 0: ok" {
		t.Fatalf("check status %+v", st)
	}
	w.await(t, "web-2", Healthy)

	if err := os.WriteFile(filepath.Join(dir, "fail-web-1"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	v = w.await(t, "web-1", Unhealthy)
	want := fmt.Sprintf(`exec "script": run %s %s: exit status 3: failing: web-1 of web at 127.0.0.1:4012\nsee the log (2 consecutive failures)`, sh, dir)
	if len(v.Evidence) != 1 || v.Evidence[0] != want {
		t.Fatalf("evidence %q, want %q", v.Evidence, want)
	}
	if v, _ := p.Verdict("web-2"); v.State != Healthy {
		t.Fatalf("web-2 is %s: %q", v.State, v.Evidence)
	}

	if err := os.Remove(filepath.Join(dir, "fail-web-1")); err != nil {
		t.Fatal(err)
	}
	w.await(t, "web-1", Healthy)
}

// TestExecEnvironment: the command gets the instance's identity, the
// agent's PATH and nothing else of the agent's environment, and runs in /.
func TestExecEnvironment(t *testing.T) {
	t.Setenv("IMMUTD_TEST_SECRET", "do not pass")
	sh := script(t, `echo "id=$IMMUTD_INSTANCE_ID fleet=$IMMUTD_FLEET addr=$IMMUTD_ADDRESS secret=${IMMUTD_TEST_SECRET:-unset} home=${HOME:-unset} cwd=$(pwd)"
[ "$PATH" = "$1" ] || { echo "PATH is $PATH"; exit 1; }
`)
	p, w := realProber(t, Options{})
	p.Set([]Target{{InstanceID: "api-7", Fleet: "api", Address: "[::1]:9000", Checks: []state.Check{fastExec("env", sh, os.Getenv("PATH"))}}})
	v := w.await(t, "api-7", Healthy)
	want := "exit status 0: id=api-7 fleet=api addr=[::1]:9000 secret=unset home=unset cwd=/"
	if d := v.Checks["env"].Last.Detail; d != want {
		t.Fatalf("detail %q, want %q", d, want)
	}
}

// TestExecTimeoutKillsProcessGroup: a command that hangs past the
// timeout fails with the timeout and what it printed, and it and what it
// started are killed. Each run notes its own pid and its child's in a
// file of its own; once a run got as far as printing before it timed
// out, the prober is stopped, and every process of every run must die.
func TestExecTimeoutKillsProcessGroup(t *testing.T) {
	dir := t.TempDir()
	sh := script(t, `sleep 1000 &
echo "$$ $!" > "$1/pids.$$.tmp" && mv "$1/pids.$$.tmp" "$1/pids.$$"
echo started
wait
`)
	w := newWatcher()
	p := New(Options{OnChange: w.onChange})
	stop := runProber(t, p)
	c := fastExec("hang", sh, dir)
	c.Timeout, c.Interval, c.StartupTimeout = 200*time.Millisecond, 200*time.Millisecond, 0
	p.Set([]Target{{InstanceID: "slow", Address: "127.0.0.1:1", Checks: []state.Check{c}}})
	w.await(t, "slow", NeverHealthy)
	var r Result
	waitUntil(t, "a run that printed before it timed out", func() bool {
		for _, x := range p.History("slow") {
			if x.Detail == "timeout after 200ms: started" {
				r = x
				return true
			}
		}
		return false
	})
	if r.OK || r.Duration < 200*time.Millisecond || r.Duration > bound {
		t.Fatalf("result %+v", r)
	}
	stop()
	files, err := filepath.Glob(filepath.Join(dir, "pids.*[0-9]"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no pid files: %v", err)
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, field := range strings.Fields(string(b)) {
			pid, err := strconv.Atoi(field)
			if err != nil {
				t.Fatalf("%s: %q", f, b)
			}
			waitUntil(t, fmt.Sprintf("process %d of %s to die", pid, filepath.Base(f)), func() bool { return !alive(pid) })
		}
	}
}

// alive says whether pid is a process that has not exited (a zombie
// waiting for its parent to reap it has).
func alive(pid int) bool {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	i := strings.LastIndexByte(string(stat), ')')
	return i < 0 || i+2 >= len(stat) || (stat[i+2] != 'Z' && stat[i+2] != 'X')
}

// TestExecLeftoversKilled: what a passing command leaves running is
// killed with its process group.
func TestExecLeftoversKilled(t *testing.T) {
	dir := t.TempDir()
	sh := script(t, `sleep 1000 >/dev/null 2>&1 &
echo $! > "$1/child.tmp" && mv "$1/child.tmp" "$1/child"
`)
	p, w := realProber(t, Options{})
	c := fastExec("leaves", sh, dir)
	c.Interval = time.Hour
	p.Set([]Target{{InstanceID: "a", Address: "127.0.0.1:1", Checks: []state.Check{c}}})
	w.await(t, "a", Healthy)
	b, err := os.ReadFile(filepath.Join(dir, "child"))
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	waitUntil(t, fmt.Sprintf("the left-over sleep (%d) to die", pid), func() bool { return !alive(pid) })
}

func TestExecCannotStart(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "missing")
	notExec := script(t, "exit 0\n")
	if err := os.Chmod(notExec, 0o644); err != nil {
		t.Fatal(err)
	}
	p, w := realProber(t, Options{})
	c1, c2 := fastExec("missing", missing), fastExec("noexec", notExec)
	c1.StartupTimeout, c2.StartupTimeout = 0, 0
	p.Set([]Target{
		{InstanceID: "a", Address: "127.0.0.1:1", Checks: []state.Check{c1}},
		{InstanceID: "b", Address: "127.0.0.1:1", Checks: []state.Check{c2}},
	})
	for id, want := range map[string]string{
		"a": fmt.Sprintf(`exec "missing": run %s: cannot run %s: no such file or directory (1 consecutive failure)`, missing, missing),
		"b": fmt.Sprintf(`exec "noexec": run %s: cannot run %s: permission denied (1 consecutive failure)`, notExec, notExec),
	} {
		v := w.await(t, id, NeverHealthy)
		if len(v.Evidence) != 1 || v.Evidence[0] != want {
			t.Fatalf("%s: evidence %q, want %q", id, v.Evidence, want)
		}
	}
}

// TestExecOutputBoundedAndEscaped: a chatty command's detail is its
// first KiB, on one line, with control characters and bytes that are not
// UTF-8 escaped.
func TestExecOutputBoundedAndEscaped(t *testing.T) {
	sh := script(t, `printf 'a\tb\033[31mred\342\200\256\377\n'
i=0
while [ $i -lt 100 ]; do echo 0123456789012345678901234567890123456789; i=$((i+1)); done
exit 1
`)
	p, w := realProber(t, Options{})
	c := fastExec("chatty", sh)
	c.StartupTimeout = 0
	p.Set([]Target{{InstanceID: "a", Address: "127.0.0.1:1", Checks: []state.Check{c}}})
	v := w.await(t, "a", NeverHealthy)
	d := v.Checks["chatty"].LastFailure.Detail
	const head = `exit status 1: a\tb\x1b[31mred\u202e\xff\n0123456789`
	if !strings.HasPrefix(d, head) || !strings.HasSuffix(d, "...") {
		t.Fatalf("detail %q, want it to start with %q and end with ...", d, head)
	}
	if max := len("exit status 1: ") + maxExecOutput + len("..."); len(d) > max {
		t.Fatalf("detail of %d bytes, more than %d", len(d), max)
	}
	if strings.ContainsAny(d, "\n\t\x1b") {
		t.Fatalf("detail %q has control characters", d)
	}
}

func TestExecOutputText(t *testing.T) {
	long := strings.Repeat("é", maxExecOutput) // 2 bytes a rune
	for _, tc := range []struct {
		name, in, want string
	}{
		{"empty", "", ""},
		{"trimmed", "  ok \n\n", "ok"},
		{"lines", "one\ntwo\r\n", `one\ntwo`},
		{"controls", "a\x00b\x7fc\u200bd", `a\x00b\x7fc\u200bd`},
		{"not utf-8", "a\xc3", `a\xc3`},
		{"cut at a rune", long, strings.Repeat("é", maxExecOutput/2) + "..."},
		{"escapes clipped", strings.Repeat("\x01", maxExecOutput), strings.Repeat(`\x01`, maxExecOutput/4) + "..."},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := &execOutput{}
			// In pieces, as a pipe delivers it.
			for _, b := range []byte(tc.in) {
				o.Write([]byte{b})
			}
			if got := o.text(); got != tc.want {
				t.Fatalf("text %q, want %q", got, tc.want)
			}
		})
	}
}

// TestExecConcurrencyBoundedByWorkers: a probe holds its worker while
// its command runs, so no more commands run at once than there are
// workers. Each run counts the runs in progress (each marks itself with
// a file for as long as it runs) and prints the count.
func TestExecConcurrencyBoundedByWorkers(t *testing.T) {
	dir := t.TempDir()
	sh := script(t, `touch "$1/running.$$"
sleep 0.05
n=$(ls "$1" | grep -c '^running\.')
rm "$1/running.$$"
echo "$n"
`)
	const workers = 2
	p, w := realProber(t, Options{Workers: workers})
	var targets []Target
	for i := range 6 {
		targets = append(targets, Target{InstanceID: fmt.Sprint("i", i), Address: "127.0.0.1:1", Checks: []state.Check{fastExec("count", sh, dir)}})
	}
	p.Set(targets)
	for _, tg := range targets {
		w.await(t, tg.InstanceID, Healthy)
	}
	runs := 0
	for _, tg := range targets {
		for _, r := range p.History(tg.InstanceID) {
			n, err := strconv.Atoi(strings.TrimPrefix(r.Detail, "exit status 0: "))
			if err != nil {
				t.Fatalf("%s: detail %q", tg.InstanceID, r.Detail)
			}
			if n < 1 || n > workers {
				t.Fatalf("%s: %d commands ran at once with %d workers", tg.InstanceID, n, workers)
			}
			runs++
		}
	}
	if runs < len(targets) {
		t.Fatalf("%d runs", runs)
	}
}
