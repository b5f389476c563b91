// Package systemd_test checks the systemd files shipped in this directory
// with the real systemd tools: immutd.service (and its opt-in docker
// drop-in) with `systemd-analyze verify`, immutd.sysusers with
// systemd-sysusers and immutd.tmpfiles with systemd-tmpfiles, each applied
// to a scratch root. It also pins the directives the agent depends on.
//
// The tools are found through PATH (or SYSTEMD_ANALYZE, SYSTEMD_SYSUSERS,
// SYSTEMD_TMPFILES). A missing tool is a failure, not a skip:
// .ci/ensure-tools installs it (Debian package "systemd"). Under go test
// -short (unit tests only) the tests that run a tool, and the install
// test (make install, root, unshare), are skipped.
package systemd_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

const (
	unitFile     = "immutd.service"
	dockerDropIn = "immutd-docker.conf"
	sysusersFile = "immutd.sysusers"
	tmpfilesFile = "immutd.tmpfiles"

	installedBinary = "/usr/local/bin/immutd"
	wantExecStart   = installedBinary + " agent -config /etc/immutd/agent.hcl"
)

// tool returns the path of a systemd tool or fails the test; in -short
// mode it skips the test.
func tool(t *testing.T, name, env string) string {
	t.Helper()
	if testing.Short() {
		t.Skipf("runs %s: skipped in -short mode (unit tests only)", name)
	}
	if p := os.Getenv(env); p != "" {
		return p
	}
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s not found in PATH and %s is not set (run .ci/ensure-tools, or apt-get install systemd): %v", name, env, err)
	}
	return p
}

// run runs a command and returns its combined output and whether it
// exited 0; it fails the test if the command could not be run at all.
func run(t *testing.T, name string, args ...string) (string, bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	err := cmd.Run()
	if err != nil {
		if _, ok := err.(*exec.ExitError); !ok || ctx.Err() != nil {
			t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out.String())
		}
	}
	return out.String(), err == nil
}

func readFile(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// fakeBinary puts an executable that stands in for the immutd binary into
// dir (verify only checks that ExecStart= names an executable file) and
// returns its path.
func fakeBinary(t *testing.T, dir string) string {
	t.Helper()
	if err := os.MkdirAll(filepath.Join(dir, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "bin", "immutd")
	if err := os.WriteFile(path, []byte("#!/bin/sh\nexit 0\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

// stageUnit writes a copy of unit, with the binary path replaced by a
// stand-in and the docker drop-in beside it, into a new temporary
// directory and returns the path of the unit copy.
func stageUnit(t *testing.T, unit string) string {
	t.Helper()
	if !strings.Contains(unit, "\nExecStart="+wantExecStart+"\n") {
		t.Fatalf("%s: no line ExecStart=%s", unitFile, wantExecStart)
	}
	dir := t.TempDir()
	bin := fakeBinary(t, dir)
	unit = strings.ReplaceAll(unit, installedBinary, bin)
	path := filepath.Join(dir, unitFile)
	if err := os.WriteFile(path, []byte(unit), 0o644); err != nil {
		t.Fatal(err)
	}
	dropIns := filepath.Join(dir, unitFile+".d")
	if err := os.MkdirAll(dropIns, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dropIns, "docker.conf"), []byte(readFile(t, dockerDropIn)), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// verify runs systemd-analyze verify on a staged unit and returns the
// output lines that concern the staged files (systemd-analyze reports
// unknown keys, bad values and deprecated settings as such lines and still
// exits 0) and whether it exited 0.
func verify(t *testing.T, path string) ([]string, bool, string) {
	t.Helper()
	out, ok := run(t, tool(t, "systemd-analyze", "SYSTEMD_ANALYZE"), "verify", path)
	dir := filepath.Dir(path)
	var about []string
	for line := range strings.Lines(out) {
		line = strings.TrimSpace(line)
		if strings.Contains(line, dir) || strings.Contains(line, unitFile) || strings.Contains(line, "immutd") {
			about = append(about, line)
		}
	}
	return about, ok, out
}

func TestUnitVerifies(t *testing.T) {
	tool(t, "systemd-analyze", "SYSTEMD_ANALYZE")
	path := stageUnit(t, readFile(t, unitFile))
	about, ok, out := verify(t, path)
	if !ok {
		t.Fatalf("systemd-analyze verify %s failed:\n%s", unitFile, out)
	}
	if len(about) > 0 {
		t.Fatalf("systemd-analyze verify warns about %s (or its drop-in):\n%s", unitFile, strings.Join(about, "\n"))
	}
	if out != "" {
		t.Logf("systemd-analyze verify printed (about other units):\n%s", out)
	}
}

// TestUnitVerifyCatchesMistakes makes sure the warning detection above
// works with this systemd version: a misspelt key in the unit and in the
// drop-in must each be reported.
func TestUnitVerifyCatchesMistakes(t *testing.T) {
	tool(t, "systemd-analyze", "SYSTEMD_ANALYZE")
	unit := readFile(t, unitFile)
	t.Run("unit", func(t *testing.T) {
		bad := strings.Replace(unit, "\nPrivateTmp=", "\nPrivateTmpp=", 1)
		about, _, out := verify(t, stageUnit(t, bad))
		if len(about) == 0 {
			t.Fatalf("systemd-analyze verify did not report a misspelt key:\n%s", out)
		}
	})
	t.Run("drop-in", func(t *testing.T) {
		path := stageUnit(t, unit)
		dropIn := filepath.Join(filepath.Dir(path), unitFile+".d", "docker.conf")
		if err := os.WriteFile(dropIn, []byte("[Service]\nSupplementaryGroupz=docker\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		about, _, out := verify(t, path)
		if len(about) == 0 {
			t.Fatalf("systemd-analyze verify did not report a misspelt key in the drop-in:\n%s", out)
		}
	})
}

// directives parses a unit file into section.key -> values (in order).
// Continuation lines are not used by our files and are not supported.
func directives(t *testing.T, text string) map[string][]string {
	t.Helper()
	d := map[string][]string{}
	section := ""
	sc := bufio.NewScanner(strings.NewReader(text))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";"):
		case strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]"):
			section = strings.Trim(line, "[]")
		default:
			if strings.HasSuffix(line, `\`) {
				t.Fatalf("line %d: continuation lines are not supported by this test", n)
			}
			k, v, ok := strings.Cut(line, "=")
			if !ok {
				t.Fatalf("line %d: not key=value: %q", n, line)
			}
			key := section + "." + strings.TrimSpace(k)
			d[key] = append(d[key], strings.TrimSpace(v))
		}
	}
	return d
}

func isTrue(v string) bool {
	return slices.Contains([]string{"1", "yes", "y", "true", "t", "on"}, strings.ToLower(v))
}

func TestUnitDirectives(t *testing.T) {
	d := directives(t, readFile(t, unitFile))
	last := func(key string) (string, bool) {
		v := d[key]
		if len(v) == 0 {
			return "", false
		}
		return v[len(v)-1], true
	}
	exact := map[string]string{
		"Service.Type":                    "notify",
		"Service.NotifyAccess":            "main",
		"Service.ExecStart":               wantExecStart,
		"Service.ExecReload":              "/bin/kill -HUP $MAINPID",
		"Service.Restart":                 "on-failure",
		"Service.KillMode":                "process",
		"Service.User":                    "immutd",
		"Service.Group":                   "immutd",
		"Service.StateDirectory":          "immutd",
		"Service.ConfigurationDirectory":  "immutd",
		"Service.ProtectSystem":           "strict",
		"Service.UMask":                   "0077",
		"Service.CapabilityBoundingSet":   "",
		"Service.RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
		"Service.SystemCallErrorNumber":   "EPERM",
		"Service.ProtectProc":             "invisible",
		"Service.ProcSubset":              "pid",
		"Service.SystemCallArchitectures": "native",
		"Install.WantedBy":                "multi-user.target",
	}
	for key, want := range exact {
		got, ok := last(key)
		if !ok {
			t.Errorf("%s: %s= is missing", unitFile, key)
		} else if got != want {
			t.Errorf("%s: %s=%s, want %s=%s", unitFile, key, got, key, want)
		}
	}
	for _, key := range []string{
		"Service.ProtectHome", "Service.PrivateTmp", "Service.PrivateDevices",
		"Service.NoNewPrivileges", "Service.ProtectKernelTunables",
		"Service.ProtectKernelModules", "Service.ProtectKernelLogs",
		"Service.ProtectControlGroups", "Service.RestrictNamespaces",
		"Service.LockPersonality", "Service.MemoryDenyWriteExecute",
		"Service.RestrictRealtime", "Service.PrivateUsers", "Service.ProtectHostname",
		"Service.PrivateMounts",
	} {
		if got, ok := last(key); !ok || !isTrue(got) {
			t.Errorf("%s: %s must be yes, got %q", unitFile, key, got)
		}
	}
	// Set to some (non-zero) value; the exact number is a tuning choice.
	for _, key := range []string{"Service.WatchdogSec", "Service.RestartSec", "Service.TimeoutStopSec", "Service.LimitNOFILE"} {
		if got, ok := last(key); !ok || got == "" || got == "0" || got == "infinity" {
			t.Errorf("%s: %s must be set to a finite non-zero value, got %q", unitFile, key, got)
		}
	}
	// DynamicUser= would make instances' files unowned after a restart.
	if got, ok := last("Service.DynamicUser"); ok && isTrue(got) {
		t.Errorf("%s: DynamicUser=%s; the agent needs the static user from %s", unitFile, got, sysusersFile)
	}
	// Docker access is an opt-in drop-in, never the default.
	if _, ok := last("Service.SupplementaryGroups"); ok {
		t.Errorf("%s: SupplementaryGroups= belongs in the opt-in drop-in %s", unitFile, dockerDropIn)
	}
	dd := directives(t, readFile(t, dockerDropIn))
	if got := dd["Service.SupplementaryGroups"]; !slices.Equal(got, []string{"docker"}) {
		t.Errorf("%s: SupplementaryGroups=%v, want docker", dockerDropIn, got)
	}
	if got := dd["Service.PrivateUsers"]; !slices.Equal(got, []string{"no"}) {
		t.Errorf("%s: PrivateUsers=%v, want no (the docker group is not mapped into a private user namespace)", dockerDropIn, got)
	}
}

// maxExposure is the highest `systemd-analyze security` exposure the unit
// may have, with and without the docker drop-in (0 is best, 10 worst).
const maxExposure = 2.0

// TestUnitSecurityExposure rates the unit with systemd-analyze security
// (offline: no running systemd is needed).
func TestUnitSecurityExposure(t *testing.T) {
	analyze := tool(t, "systemd-analyze", "SYSTEMD_ANALYZE")
	plain := filepath.Join(t.TempDir(), unitFile)
	if err := os.WriteFile(plain, []byte(readFile(t, unitFile)), 0o644); err != nil {
		t.Fatal(err)
	}
	for name, path := range map[string]string{"unit": plain, "unit with the docker drop-in": stageUnit(t, readFile(t, unitFile))} {
		out, ok := run(t, analyze, "security", "--offline=true", fmt.Sprintf("--threshold=%d", int(maxExposure*10)), path)
		level := ""
		for line := range strings.Lines(out) {
			if i := strings.Index(line, "Overall exposure level for "); i >= 0 {
				level = strings.TrimSpace(line[i:])
			}
		}
		if level == "" {
			t.Fatalf("%s: no exposure level in the output of systemd-analyze security:\n%s", name, out)
		}
		if !ok {
			t.Errorf("%s: %s, above %.1f:\n%s", name, level, maxExposure, out)
			continue
		}
		t.Logf("%s: %s", name, level)
	}
}

// TestSysusers creates the user in a scratch root with systemd-sysusers
// and checks that it is the user the unit runs as.
func TestSysusers(t *testing.T) {
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	abs, err := filepath.Abs(sysusersFile)
	if err != nil {
		t.Fatal(err)
	}
	out, ok := run(t, tool(t, "systemd-sysusers", "SYSTEMD_SYSUSERS"), "--root="+root, abs)
	if !ok {
		t.Fatalf("systemd-sysusers %s failed:\n%s", sysusersFile, out)
	}
	for line := range strings.Lines(out) {
		if !strings.HasPrefix(line, "Creating ") {
			t.Errorf("systemd-sysusers: unexpected output: %s", strings.TrimSpace(line))
		}
	}
	passwd := readFile(t, filepath.Join(root, "etc", "passwd"))
	var entry []string
	for line := range strings.Lines(passwd) {
		if f := strings.Split(strings.TrimSpace(line), ":"); len(f) == 7 && f[0] == "immutd" {
			entry = f
		}
	}
	if entry == nil {
		t.Fatalf("systemd-sysusers created no immutd user; passwd:\n%s", passwd)
	}
	if entry[5] != "/var/lib/immutd" || entry[6] != "/usr/sbin/nologin" {
		t.Errorf("immutd user: home %s shell %s, want /var/lib/immutd and /usr/sbin/nologin", entry[5], entry[6])
	}
	group := readFile(t, filepath.Join(root, "etc", "group"))
	found := false
	for line := range strings.Lines(group) {
		found = found || strings.HasPrefix(line, "immutd:")
	}
	if !found {
		t.Errorf("systemd-sysusers created no immutd group; group:\n%s", group)
	}
}

// TestTmpfiles applies immutd.tmpfiles to a scratch root. systemd-tmpfiles
// resolves owners through the host's user database, so where the immutd
// user does not exist (a CI machine, a developer's laptop) the owner is
// replaced by root for this syntax and effect check.
func TestTmpfiles(t *testing.T) {
	text := readFile(t, tmpfilesFile)
	if _, err := user.Lookup("immutd"); err != nil {
		t.Logf("no immutd user on this machine: checking %s with owner root", tmpfilesFile)
		text = strings.ReplaceAll(text, " immutd immutd ", " root root ")
	}
	dir := t.TempDir()
	conf := filepath.Join(dir, "immutd.conf")
	if err := os.WriteFile(conf, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	root := filepath.Join(dir, "root")
	if err := os.Mkdir(root, 0o755); err != nil {
		t.Fatal(err)
	}
	out, ok := run(t, tool(t, "systemd-tmpfiles", "SYSTEMD_TMPFILES"), "--root="+root, "--create", conf)
	if !ok || strings.TrimSpace(out) != "" {
		t.Fatalf("systemd-tmpfiles --create %s (exit ok: %v):\n%s", tmpfilesFile, ok, out)
	}
	for path, mode := range map[string]os.FileMode{
		"etc/immutd":          0o755,
		"etc/immutd/fleets.d": 0o755,
		"var/lib/immutd":      0o750,
	} {
		fi, err := os.Stat(filepath.Join(root, path))
		if err != nil {
			t.Errorf("systemd-tmpfiles did not create /%s: %v", path, err)
			continue
		}
		if !fi.IsDir() || fi.Mode().Perm() != mode {
			t.Errorf("/%s: mode %v, want directory %v", path, fi.Mode(), mode)
		}
	}
}
