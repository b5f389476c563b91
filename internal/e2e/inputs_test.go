package e2e

import (
	"fmt"
	"math/rand"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// Tests of findings 2, 3, 5, 6 and 8 of the trust audit, and of the small
// ones of finding 7: bad or hostile input never takes the agent down,
// never kills an instance, and is reported in bounded, escaped text.

// memoryBound is the most memory a bad fleet file may cost, in all.
const memoryBound = 512 << 20

// TestHugeFleetFileIsRefusedWithoutReadingIt: a 1 TB (sparse) fleet
// file, and a megabyte of random bytes, make validate and the agent
// answer at once with an error naming the file, far below 512 MiB, and
// the agent also starts with the file there.
func TestHugeFleetFileIsRefusedWithoutReadingIt(t *testing.T) {
	e := newEnv(t, envOpts{})
	e.writeFleet("web.hcl", fleetFile("web", 1, "v1", ""))
	e.start()
	f := e.waitHealthy("web", 1, "", 30*time.Second)
	huge := filepath.Join(e.fleetsDir, "huge.hcl")
	fh, err := os.Create(huge)
	if err != nil {
		t.Fatal(err)
	}
	if err := fh.Truncate(1 << 40); err != nil {
		t.Fatal(err)
	}
	fh.Close()
	random := make([]byte, 1<<20-1)
	rand.New(rand.NewSource(1)).Read(random)
	if err := os.WriteFile(filepath.Join(e.fleetsDir, "random.hcl"), random, 0o644); err != nil {
		t.Fatal(err)
	}

	cmd := exec.Command(filepath.Join(binDir, "immutd"), "validate", e.fleetsDir)
	start := time.Now()
	out, _ := cmd.CombinedOutput()
	took := time.Since(start)
	rss := cmd.ProcessState.SysUsage().(*syscall.Rusage).Maxrss << 10
	if cmd.ProcessState.ExitCode() != 1 || !strings.Contains(string(out), huge+": is 1099511627776 bytes") || !strings.Contains(string(out), "random.hcl:1:") || !strings.Contains(string(out), "not UTF-8 text") {
		t.Fatalf("validate: exit %d:\n%s", cmd.ProcessState.ExitCode(), out)
	}
	if rss > memoryBound {
		t.Errorf("validate used %d MiB", rss>>20)
	}
	t.Logf("validate answered in %v with at most %d MiB", took.Round(time.Millisecond), rss>>20)

	e.waitFor("the agent to reject the files", 30*time.Second, func() (bool, string) {
		st := e.status()
		return !st.Config.OK && strings.Contains(st.Config.Error, huge), st.Config.Error
	})
	if rss := procValue(t, e.pid(), "status", "VmHWM") << 10; rss > memoryBound {
		t.Errorf("the agent used %d MiB", rss>>20)
	}
	// It starts again with the files there, and keeps its fleet.
	e.kill9()
	e.start()
	e.waitFor("the restarted agent to reject the files", 30*time.Second, func() (bool, string) {
		st := e.status()
		return !st.Config.OK && strings.Contains(st.Config.Error, huge), st.Config.Error
	})
	if rss := procValue(t, e.pid(), "status", "VmHWM") << 10; rss > memoryBound {
		t.Errorf("the restarted agent used %d MiB", rss>>20)
	}
	if g := e.waitHealthy("web", 1, "", 30*time.Second); g.Instances[0].ID != f.Instances[0].ID {
		t.Fatalf("the instance was replaced: %s", describe(g))
	}
}

// TestFleetFileErrorsStayBounded: a 300 KB file with an error on every
// line gives a report of bounded length in status and in the event.
func TestFleetFileErrorsStayBounded(t *testing.T) {
	e := newEnv(t, envOpts{})
	e.writeFleet("web.hcl", fleetFile("web", 1, "v1", ""))
	e.start()
	e.waitHealthy("web", 1, "", 30*time.Second)
	var b strings.Builder
	for b.Len() < 300<<10 {
		fmt.Fprintf(&b, "junk_%d = %q\n", b.Len(), strings.Repeat("z", 100))
	}
	e.writeFleet("junk.hcl", b.String())
	var st string
	e.waitFor("the junk to be rejected", 30*time.Second, func() (bool, string) {
		s := e.status()
		st = s.Config.Error
		return !s.Config.OK && strings.Contains(st, "junk.hcl"), st
	})
	if lines := strings.Count(st, "\n") + 1; lines > 60 || len(st) > 30<<10 || !strings.Contains(st, "more errors in this file") {
		t.Errorf("status holds %d lines, %d bytes of errors", lines, len(st))
	}
	ev := findEvent(e.events(), "config_rejected", "")
	if ev == nil {
		t.Fatal("no config_rejected event")
	}
	size := 0
	for _, x := range ev.Evidence {
		size += len(x)
	}
	if len(ev.Evidence) > 60 || size > 30<<10 {
		t.Errorf("the event holds %d items, %d bytes", len(ev.Evidence), size)
	}
}

// TestBrokenFleetEntryNeverDrains: with auto_drain_removed_fleets on, a
// fleet file that is a symlink whose target moved away, and a FIFO and a
// directory named *.hcl, reject the change: nothing is drained.
func TestBrokenFleetEntryNeverDrains(t *testing.T) {
	e := newEnv(t, envOpts{autoDrain: true})
	real := filepath.Join(e.dir, "managed", "web.hcl")
	if err := os.MkdirAll(filepath.Dir(real), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(real, []byte(fleetFile("web", 3, "v1", "")), 0o644); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(e.fleetsDir, "web.hcl")
	// relink puts the link in place again by rename, as config management
	// does, so that the watcher hears of it at once (it does not watch
	// the link's target; its 30s rescan would find the change too).
	relink := func() {
		must(t, os.Symlink(real, link+".new"))
		must(t, os.Rename(link+".new", link))
	}
	relink()
	e.start()
	before := ids(e.waitHealthy("web", 3, "", 30*time.Second))
	gen := e.status().Generation
	for _, step := range []struct {
		what   string
		break_ func()
		fix    func()
	}{
		{"the symlink's target moved away", func() { must(t, os.Rename(real, real+".moved")); relink() }, func() { must(t, os.Rename(real+".moved", real)); relink() }},
		{"a FIFO named *.hcl", func() { must(t, syscall.Mkfifo(filepath.Join(e.fleetsDir, "pipe.hcl"), 0o644)) }, func() { must(t, os.Remove(filepath.Join(e.fleetsDir, "pipe.hcl"))) }},
		{"a directory named *.hcl", func() { must(t, os.Mkdir(filepath.Join(e.fleetsDir, "dir.hcl"), 0o755)) }, func() { must(t, os.Remove(filepath.Join(e.fleetsDir, "dir.hcl"))) }},
	} {
		step.break_()
		e.waitFor("the change to be rejected ("+step.what+")", 30*time.Second, func() (bool, string) {
			st := e.status()
			return !st.Config.OK, st.Config.Error
		})
		e.waitPasses(3)
		st := e.status()
		if st.Generation != gen {
			t.Fatalf("%s: the desired generation moved from %d to %d", step.what, gen, st.Generation)
		}
		f := e.fleet("web")
		if f.Unconfigured || f.Draining || len(f.Instances) != 3 {
			t.Fatalf("%s: %s (unconfigured %v, draining %v)", step.what, describe(f), f.Unconfigured, f.Draining)
		}
		step.fix()
		e.waitFor("the fix to be read ("+step.what+")", 30*time.Second, func() (bool, string) {
			st := e.status()
			return st.Config.OK, st.Config.Error
		})
	}
	if got := ids(e.waitHealthy("web", 3, "", 30*time.Second)); fmt.Sprint(got) != fmt.Sprint(before) {
		t.Fatalf("instances changed: %v, before %v", got, before)
	}
	for _, ev := range e.events() {
		if ev.Action == "drain_started" || ev.Action == "fleet_unconfigured" || ev.Action == "terminated" {
			t.Fatalf("unexpected event %+v", ev)
		}
	}
}

// TestRemediationDisabledOnlyReports: with remediation { enabled =
// false }, a file added to an instance is reported, no replacement is
// launched, and once the file is gone again nothing is killed as excess.
func TestRemediationDisabledOnlyReports(t *testing.T) {
	e := newEnv(t, envOpts{})
	e.writeFleet("web.hcl", fleetFile("web", 2, "v1", "  remediation {\n    enabled = false\n  }\n"))
	e.start()
	f := e.waitHealthy("web", 2, "", 30*time.Second)
	before := ids(f)
	seq := e.lastSeq()
	added := filepath.Join(f.Instances[0].Location, "intruder.sh")
	must(t, os.WriteFile(added, []byte("#!/bin/sh\n"), 0o755))
	e.waitFor("the drift to be reported", 30*time.Second, func() (bool, string) {
		f := e.fleet("web")
		for _, b := range f.Blocked {
			if b.Cause == "disabled" {
				return true, ""
			}
		}
		return false, describe(f)
	})
	e.waitPasses(3)
	must(t, os.Remove(added))
	e.waitFor("the drift to clear", 30*time.Second, func() (bool, string) {
		f := e.fleet("web")
		return len(f.Blocked) == 0, describe(f)
	})
	e.waitPasses(3)
	for _, ev := range e.eventsAfter(seq) {
		if strings.HasPrefix(string(ev.Action), "launch") || strings.HasPrefix(string(ev.Action), "terminate") {
			t.Errorf("with remediation disabled: %s %s (%s) %v", ev.Action, ev.InstanceID, ev.Reason, ev.Evidence)
		}
	}
	if got := ids(e.fleet("web")); fmt.Sprint(got) != fmt.Sprint(before) {
		t.Fatalf("instances changed: %v, before %v", got, before)
	}
}

// TestHostileNamesAreEscaped: a fleet file and a file inside an instance
// whose names carry terminal escape sequences show up in status and
// events as visible escapes, never raw.
func TestHostileNamesAreEscaped(t *testing.T) {
	e := newEnv(t, envOpts{})
	e.writeFleet("web.hcl", fleetFile("web", 1, "v1", ""))
	e.start()
	f := e.waitHealthy("web", 1, "", 30*time.Second)
	evil := "\x1b]0;pwned\x07\x1b[2J\u009b1m\u202e"
	must(t, os.WriteFile(filepath.Join(e.fleetsDir, evil+".hcl"), []byte("fleet {"), 0o644))
	must(t, os.WriteFile(filepath.Join(f.Instances[0].Location, evil), []byte("x"), 0o644))
	e.waitTerminated("web", f.Instances[0].ID)
	e.waitFor("the bad file to be rejected", 30*time.Second, func() (bool, string) {
		st := e.status()
		return !st.Config.OK, st.Config.Error
	})
	for _, args := range [][]string{{"status"}, {"events"}, {"events", "-json"}, {"status", "-json"}, {"validate", e.fleetsDir}} {
		var out string
		if args[0] == "validate" {
			out, _ = runCLI(args...)
		} else {
			out, _ = e.cli(args...)
		}
		if strings.ContainsAny(out, "\x1b\x07\u009b\u202e") {
			t.Errorf("immutd %s printed a raw control character:\n%q", strings.Join(args, " "), out)
		}
		if !strings.Contains(out, `\x1b`) && !strings.Contains(out, `\u001b`) {
			t.Errorf("immutd %s does not show the escape at all:\n%s", strings.Join(args, " "), out)
		}
	}
}

// TestCLIHelpNeverReachesTheAgent: -h and --help after a subcommand print
// its usage and exit 0, and no request reaches the agent's address.
func TestCLIHelpNeverReachesTheAgent(t *testing.T) {
	var hits atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { hits.Add(1) }))
	defer srv.Close()
	for _, args := range [][]string{{"fleet", "drain", "-h"}, {"fleet", "drain", "--help"}, {"cluster", "join", "--help"}, {"fleet", "resolve", "web", "-h"}, {"cluster", "remove", "-help"}} {
		out, code := runCLI(append(args, "-addr", srv.URL)...)
		if code != 0 || !strings.Contains(out, "usage: immutd "+args[0]+" "+args[1]) {
			t.Errorf("immutd %s: exit %d:\n%s", strings.Join(args, " "), code, out)
		}
	}
	for _, args := range [][]string{{"fleet", "drain", "-x"}, {"fleet", "drain"}, {"cluster", "join"}} {
		if out, code := runCLI(append(args, "-addr", srv.URL)...); code != 2 {
			t.Errorf("immutd %s: exit %d, want 2:\n%s", strings.Join(args, " "), code, out)
		}
	}
	if n := hits.Load(); n != 0 {
		t.Fatalf("%d requests reached the agent", n)
	}
	// Flags before NAME work, and with no agent there is one line with a hint.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	addr := ln.Addr().String()
	ln.Close()
	out, code := runCLI("fleet", "drain", "-addr", addr, "web")
	if code != 1 || strings.Count(strings.TrimSpace(out), "\n") != 0 || !strings.Contains(out, "is it running?") || strings.Count(out, addr) != 1 {
		t.Fatalf("drain with no agent: exit %d:\n%s", code, out)
	}
}

// TestSecretFilesOthersCanReadAreRefused: an API token file (and a
// cluster key) readable by group or others stops the agent at start with
// a clear error, and the CLI refuses such a token file too.
func TestSecretFilesOthersCanReadAreRefused(t *testing.T) {
	dir := t.TempDir()
	token := filepath.Join(dir, "token")
	must(t, os.WriteFile(token, []byte("0123456789abcdef-open\n"), 0o644))
	must(t, os.Chmod(token, 0o644))
	e := newEnv(t, envOpts{extra: fmt.Sprintf("api {\n  token_file = %q\n}\n", token)})
	out, code := runAgentOnce(t, e)
	if code == 0 || !strings.Contains(out, token) || !strings.Contains(out, "chmod 600") {
		t.Fatalf("agent with a 0644 token file: exit %d:\n%s", code, out)
	}
	if out, code := runCLI("status", "-addr", e.httpAddr, "-token-file", token); code == 0 || !strings.Contains(out, "chmod 600") {
		t.Fatalf("CLI with a 0644 token file: exit %d:\n%s", code, out)
	}
	tlsDir := filepath.Join(dir, "tls")
	must(t, os.MkdirAll(tlsDir, 0o755))
	makeCerts(t, tlsDir, "a")
	key := filepath.Join(tlsDir, "a-key.pem")
	must(t, os.Chmod(key, 0o640))
	e2 := newEnv(t, envOpts{cluster: fmt.Sprintf("  tls {\n    ca_file = %q\n    cert_file = %q\n    key_file = %q\n  }", filepath.Join(tlsDir, "ca.pem"), filepath.Join(tlsDir, "a.pem"), key)})
	out, code = runAgentOnce(t, e2)
	if code == 0 || !strings.Contains(out, key) || !strings.Contains(out, "chmod 600") {
		t.Fatalf("agent with a 0640 cluster key: exit %d:\n%s", code, out)
	}
}

// runAgentOnce runs the agent until it exits by itself (within a minute).
func runAgentOnce(t *testing.T, e *env) (string, int) {
	t.Helper()
	cmd := exec.Command(filepath.Join(binDir, "immutd"), "agent", "-config", e.cfgPath)
	done := make(chan struct{})
	var out []byte
	go func() { out, _ = cmd.CombinedOutput(); close(done) }()
	select {
	case <-done:
	case <-time.After(time.Minute):
		_ = cmd.Process.Kill()
		<-done
		t.Fatalf("the agent did not exit:\n%s", out)
	}
	return string(out), cmd.ProcessState.ExitCode()
}

// TestAPIDropsSilentClients: a client that sends a request's headers
// but holds its body back is disconnected (the read timeout), and the API
// serves others meanwhile.
func TestAPIDropsSilentClients(t *testing.T) {
	e := newEnv(t, envOpts{})
	e.start()
	conn, err := net.Dial("tcp", e.httpAddr)
	must(t, err)
	defer conn.Close()
	_, err = conn.Write([]byte("POST /v1/fleets/web/drain HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer x\r\nContent-Length: 100\r\n\r\n"))
	must(t, err)
	e.status() // others are served meanwhile
	start := time.Now()
	_ = conn.SetReadDeadline(time.Now().Add(2 * time.Minute))
	buf := make([]byte, 512)
	for {
		if _, err := conn.Read(buf); err != nil {
			break
		}
	}
	if took := time.Since(start); took >= 2*time.Minute {
		t.Fatalf("the API kept a silent connection open for %v", took)
	}
}

// TestValidateChecksBundlesLikeTheAgent: a bundle whose entrypoint is not
// executable is an error of validate, at the fleet's position.
func TestValidateChecksBundlesLikeTheAgent(t *testing.T) {
	dir := t.TempDir()
	bundle := filepath.Join(dir, "bundle")
	must(t, copyTree(filepath.Join(imagesDir, "sampleapp-v1"), bundle))
	must(t, os.Chmod(filepath.Join(bundle, "bin", "sampleapp"), 0o644))
	fleets := filepath.Join(dir, "fleets.d")
	must(t, os.MkdirAll(fleets, 0o755))
	src := strings.Replace(fleetFile("web", 1, "v1", ""), filepath.Join(imagesDir, "sampleapp-v1"), bundle, 1)
	must(t, os.WriteFile(filepath.Join(fleets, "web.hcl"), []byte(src), 0o644))
	out, code := runCLI("validate", fleets)
	if code != 1 || !strings.Contains(out, filepath.Join(fleets, "web.hcl")+":1:1: fleet \"web\".image:") || !strings.Contains(out, "not executable") {
		t.Fatalf("validate of a bundle with a non-executable entrypoint: exit %d:\n%s", code, out)
	}
}
