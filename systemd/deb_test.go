// The tests of the Debian package that `make deb` builds from
// configs/packaging (nfpm.yaml, the maintainer scripts and debversion):
// the package is built with the real configuration, inspected with
// dpkg-deb, and installed, upgraded, removed and purged with dpkg on the
// test machine (as root; skipped under go test -short). They live with
// the unit's tests so that they never run at the same time as them: both
// create and look up the immutd user.

package systemd_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

const (
	pkg = "immutd"
	// The longest any one command may take; make deb gets buildTimeout.
	cmdTimeout   = 2 * time.Minute
	buildTimeout = 10 * time.Minute
	// How long a dpkg call waits for a dpkg lock another process holds.
	lockWait = 2 * time.Minute

	installedHint = "immutd: installed, not enabled; start it with: systemctl enable --now immutd"
)

// The paths the package and its maintainer scripts create on the machine.
// The test refuses to run (skips) when any of them exists beforehand, and
// its cleanup removes them.
var machinePaths = []string{
	"/usr/bin/immutd", "/lib/systemd/system/immutd.service", "/etc/systemd/system/immutd.service",
	"/usr/lib/sysusers.d/immutd.conf", "/usr/lib/tmpfiles.d/immutd.conf", "/usr/share/immutd",
	"/etc/immutd", "/var/lib/immutd",
}

func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	return root
}

// debRun runs a command with a timeout, stdin from /dev/null and env added
// to the test's environment, and returns its combined output. The error
// says whether it timed out.
func debRun(timeout time.Duration, env []string, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(append(os.Environ(), "DEBIAN_FRONTEND=noninteractive", "LC_ALL=C"), env...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	// A child that keeps the output open must not hold the test up.
	cmd.WaitDelay = 10 * time.Second
	err := cmd.Run()
	if ctx.Err() != nil {
		err = fmt.Errorf("timed out after %s: %w", timeout, err)
	}
	return out.String(), err
}

// must runs a command and fails the test unless it exits 0.
func debMust(t *testing.T, env []string, name string, args ...string) string {
	t.Helper()
	out, err := debRun(cmdTimeout, env, name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return out
}

// dpkg runs dpkg, waiting (bounded) while another process holds its lock.
func dpkg(t *testing.T, env []string, args ...string) (string, error) {
	t.Helper()
	deadline := time.Now().Add(lockWait)
	for {
		out, err := debRun(cmdTimeout, env, "dpkg", args...)
		if err != nil && strings.Contains(out, "lock") && strings.Contains(out, "another process") && time.Now().Before(deadline) {
			time.Sleep(time.Second)
			continue
		}
		return out, err
	}
}

func mustDpkg(t *testing.T, env []string, args ...string) string {
	t.Helper()
	start := time.Now()
	out, err := dpkg(t, env, args...)
	if err != nil {
		t.Fatalf("dpkg %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	t.Logf("dpkg %s (%s):\n%s", strings.Join(args, " "), time.Since(start).Round(time.Millisecond), strings.TrimSpace(out))
	return out
}

// status returns dpkg's status of the immutd package, "" when dpkg knows
// no such package or it is not installed at all.
func status(t *testing.T) string {
	t.Helper()
	out, err := debRun(cmdTimeout, nil, "dpkg-query", "-W", "-f=${Status}", pkg)
	out = strings.TrimSpace(out)
	var exit *exec.ExitError
	if errors.As(err, &exit) && strings.Contains(out, "no packages found") {
		return ""
	}
	if err != nil {
		t.Fatalf("dpkg-query -W %s: %v\n%s", pkg, err, out)
	}
	if strings.HasSuffix(out, " not-installed") {
		return ""
	}
	return out
}

func exists(path string) bool {
	_, err := os.Lstat(path)
	return err == nil
}

func lookupUser(name string) bool {
	_, err := user.Lookup(name)
	return err == nil
}

func lookupGroup(name string) bool {
	_, err := user.LookupGroup(name)
	return err == nil
}

func debReadFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestDebVersion checks configs/packaging/debversion, which turns the git
// describe string the binary is built with into the package's version,
// and that the versions it makes are valid and sort as releases should.
func TestDebVersion(t *testing.T) {
	script := filepath.Join(repoRoot(t), "configs/packaging/debversion")
	const (
		when   = "1764619200" // 2025-12-01 20:00:00 UTC
		commit = "86646ec1d0c4e5b6a7f8091a2b3c4d5e6f708192"
	)
	for _, tc := range []struct{ describe, when, commit, want string }{
		{"v1.2.3", when, commit, "1.2.3"},
		{"1.2.3", "", "", "1.2.3"},
		{"v1.2.3-dirty", when, commit, "1.2.3+dirty"},
		{"v1.2.3-rc.1", when, commit, "1.2.3~rc.1"},
		{"v1.2.3-4-gabc1234", when, commit, "1.2.3+git4.abc1234"},
		{"v1.2.3-4-gabc1234-dirty", when, commit, "1.2.3+git4.abc1234.dirty"},
		{"v1.2.3-rc.1-2-gdeadbee", when, commit, "1.2.3~rc.1+git2.deadbee"},
		{"86646ec", when, commit, "0.0.0~git20251201200000.86646ec"},
		{"86646ec-dirty", when, commit, "0.0.0~git20251201200000.86646ec+dirty"},
		{"86646ec", "", "", "0.0.0~git86646ec"},
		// A tag of digits is a tag, not a hash, when it is not the commit's.
		{"2024101", when, commit, "2024101"},
		{"1234567", when, "1234567" + commit[7:], "0.0.0~git20251201200000.1234567"},
		{"dev", "", "", "0.0.0~dev"},
		{"release_x", "", "", "0.0.0~release.x"},
	} {
		got, err := debRun(cmdTimeout, nil, "sh", script, tc.describe, tc.when, tc.commit)
		if err != nil {
			t.Fatalf("debversion %q: %v\n%s", tc.describe, err, got)
		}
		if got = strings.TrimSpace(got); got != tc.want {
			t.Errorf("debversion %q %q %q = %q, want %q", tc.describe, tc.when, tc.commit, got, tc.want)
		}
	}
	if _, err := exec.LookPath("dpkg"); err != nil {
		t.Logf("no dpkg here: the versions' syntax and order are not checked (%v)", err)
		return
	}
	// Each version sorts below the next.
	order := []string{
		"0.0.0~dev",
		"0.0.0~git20251201200000.86646ec",
		"0.0.0~git20251201200000.86646ec+dirty",
		"0.0.0~git20251202000000.0123abc",
		"0.0.0",
		"1.2.3~rc.1",
		"1.2.3~rc.1+git2.deadbee",
		"1.2.3",
		"1.2.3+dirty",
		"1.2.3+git4.abc1234",
		"1.2.3+git4.abc1234.dirty",
		"1.2.3+git10.0123abc",
		"1.2.4~rc.1",
	}
	for i, v := range order {
		if out, err := debRun(cmdTimeout, nil, "dpkg", "--validate-version", v); err != nil {
			t.Errorf("%q is not a valid Debian version: %v\n%s", v, err, out)
		}
		if i > 0 {
			if out, err := debRun(cmdTimeout, nil, "dpkg", "--compare-versions", order[i-1], "lt", v); err != nil {
				t.Errorf("%q does not sort below %q: %v\n%s", order[i-1], v, err, out)
			}
		}
	}
}

// entry is one line of dpkg-deb -c.
type entry struct{ perms, owner string }

// TestDebPackage builds the package with `make deb`, checks its contents,
// and installs it on this machine for real: a first install with a PATH
// that has no systemd tools (as in a container without systemd: the
// scripts fall back to adduser), remove and purge while a process of the
// immutd user still runs, then an install with the systemd tools, a
// reinstall over an edited configuration, remove and purge. The machine is
// left as it was found: the test refuses to run when immutd is installed
// (as a package or by make install), and its cleanup purges the package
// and deletes the user and group it made.
func TestDebPackage(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the .deb and installs it with dpkg as root: skipped in -short mode (unit tests only)")
	}
	if os.Geteuid() != 0 {
		t.Fatal("this test installs the package with dpkg and needs root (CI runs as root; go test -short skips it)")
	}
	for _, tool := range []string{"make", "git", "sh", "dpkg", "dpkg-deb", "dpkg-query", "setpriv", "userdel", "groupdel", "adduser", "addgroup"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s not found: %v", tool, err)
		}
	}
	if s := status(t); s != "" {
		t.Skipf("a package %s is on this machine (dpkg status %q): this test installs and purges %s, so it leaves that one alone", pkg, s, pkg)
	}
	for _, p := range machinePaths {
		if exists(p) {
			t.Skipf("%s exists (immutd installed by make install?): this test would install over it and purge it, so it leaves this machine alone", p)
		}
	}
	hadUser, hadGroup := lookupUser(pkg), lookupGroup(pkg)
	if hadUser || hadGroup {
		t.Logf("the immutd user (%v) or group (%v) exists already: the test keeps it, and cannot see the scripts create it", hadUser, hadGroup)
	}
	t.Cleanup(func() {
		if status(t) != "" {
			if out, err := dpkg(t, nil, "--purge", pkg); err != nil {
				t.Errorf("cleanup: dpkg --purge %s: %v\n%s", pkg, err, out)
			}
		}
		// None of these existed before the test (checked above).
		for _, p := range []string{"/etc/immutd", "/var/lib/immutd"} {
			if err := os.RemoveAll(p); err != nil {
				t.Errorf("cleanup: %v", err)
			}
		}
		deleteUser(t, hadUser, hadGroup)
	})

	repo := repoRoot(t)
	deb, version := build(t, repo)
	checkContents(t, repo, deb)

	// 1. No systemd tools: adduser, addgroup and mkdir make the user and
	// the directories.
	noSystemd, calls := fallbackPath(t)
	out := mustDpkg(t, []string{"PATH=" + noSystemd}, "--install", deb)
	if !strings.Contains(out, installedHint) {
		t.Errorf("first install did not print %q", installedHint)
	}
	if !hadUser && !hadGroup {
		log := debReadFile(t, calls)
		for _, want := range []string{"addgroup --system --quiet immutd", "adduser --system --quiet --ingroup immutd --home /var/lib/immutd"} {
			if !strings.Contains(log, want) {
				t.Errorf("without systemd-sysusers, postinst did not run %q; it ran:\n%s", want, log)
			}
		}
	}
	checkInstalled(t, repo, version)
	if t.Failed() {
		return
	}
	// An operator's fleet file: purge must keep it (dpkg did not install it).
	debMust(t, nil, "sh", "-c", "echo '# an operator file' > /etc/immutd/fleets.d/ops.hcl")
	mustDpkg(t, nil, "--remove", pkg)
	checkRemoved(t, "deinstall ok config-files")
	// A process of the immutd user, like a fleet instance that outlives
	// the agent: purge must keep /var/lib/immutd, and say so.
	stop := startAsImmutd(t)
	out = mustDpkg(t, nil, "--purge", pkg)
	if !strings.Contains(out, "immutd: kept /var/lib/immutd: 1 processes of user immutd still run") {
		t.Errorf("purge with a process of user immutd running did not say it kept /var/lib/immutd")
	}
	if !exists("/var/lib/immutd") {
		t.Errorf("purge removed /var/lib/immutd while a process of user immutd ran")
	}
	if !strings.Contains(out, "immutd: kept /etc/immutd") || !exists("/etc/immutd/fleets.d/ops.hcl") {
		t.Errorf("purge did not keep (and name) /etc/immutd with the operator's fleet file")
	}
	if exists("/etc/immutd/agent.hcl") {
		t.Errorf("purge left the conffile /etc/immutd/agent.hcl")
	}
	if s := status(t); s != "" {
		t.Errorf("after purge: dpkg status %q, want not installed", s)
	}
	if !lookupUser(pkg) || !lookupGroup(pkg) {
		t.Errorf("purge deleted the immutd user or group (Debian keeps system users: files may still be theirs)")
	}
	stop()
	for _, p := range []string{"/etc/immutd", "/var/lib/immutd"} {
		if err := os.RemoveAll(p); err != nil {
			t.Fatal(err)
		}
	}
	if t.Failed() {
		return
	}
	deleteUser(t, hadUser, hadGroup)

	// 2. With systemd-sysusers and systemd-tmpfiles (systemd installed but
	// not running, as here, or running).
	out = mustDpkg(t, nil, "--install", deb)
	if !strings.Contains(out, installedHint) {
		t.Errorf("install did not print %q", installedHint)
	}
	checkInstalled(t, repo, version)
	checkBinary(t, repo, version)
	checkUnitVerifies(t)
	if t.Failed() {
		return
	}

	// 3. A reinstall (the upgrade path: prerm upgrade, postinst configure
	// with the old version) keeps an edited agent file and the state.
	const edit = "\n# edited by the operator\n"
	agent := debReadFile(t, "/etc/immutd/agent.hcl") + edit
	if err := os.WriteFile("/etc/immutd/agent.hcl", []byte(agent), 0o640); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile("/var/lib/immutd/state", []byte("raft\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out = mustDpkg(t, nil, "--install", deb)
	if strings.Contains(out, installedHint) {
		t.Errorf("a reinstall printed the first install's hint %q", installedHint)
	}
	if got := debReadFile(t, "/etc/immutd/agent.hcl"); got != agent {
		t.Errorf("a reinstall did not keep the edited /etc/immutd/agent.hcl:\n%s", got)
	}
	checkOwner(t, "/etc/immutd/agent.hcl", "root", pkg, 0o640)
	if !exists("/var/lib/immutd/state") {
		t.Errorf("a reinstall lost /var/lib/immutd/state")
	}

	// 4. remove keeps configuration and state; purge removes both.
	mustDpkg(t, nil, "--remove", pkg)
	checkRemoved(t, "deinstall ok config-files")
	if got, err := os.ReadFile("/etc/immutd/agent.hcl"); err != nil || string(got) != agent {
		t.Errorf("remove did not keep the edited conffile /etc/immutd/agent.hcl (%v)", err)
	}
	if !exists("/var/lib/immutd/state") {
		t.Errorf("remove deleted the state in /var/lib/immutd")
	}
	out = mustDpkg(t, nil, "--purge", pkg)
	if strings.Contains(out, "kept") {
		t.Errorf("purge kept something:\n%s", out)
	}
	for _, p := range []string{"/etc/immutd", "/var/lib/immutd"} {
		if exists(p) {
			t.Errorf("purge left %s", p)
		}
	}
	if s := status(t); s != "" {
		t.Errorf("after purge: dpkg status %q, want not installed", s)
	}
	if !lookupUser(pkg) {
		t.Errorf("purge deleted the immutd user (Debian keeps system users)")
	}
}

// build runs make deb into a temporary directory and returns the package
// and its version.
func build(t *testing.T, repo string) (deb, version string) {
	t.Helper()
	dir := t.TempDir()
	start := time.Now()
	out, err := debRun(buildTimeout, nil, "make", "-C", repo, "deb", "DEB_DIR="+dir)
	if err != nil {
		t.Fatalf("make deb: %v\n%s", err, out)
	}
	debs, err := filepath.Glob(filepath.Join(dir, "immutd_*_amd64.deb"))
	if err != nil || len(debs) != 1 {
		t.Fatalf("make deb made %v (%v), want one immutd_VERSION_amd64.deb in %s:\n%s", debs, err, dir, out)
	}
	deb = debs[0]
	fi, err := os.Stat(deb)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("make deb: %s, %d bytes, in %s", filepath.Base(deb), fi.Size(), time.Since(start).Round(time.Millisecond))

	field := func(name string) string {
		return strings.TrimSpace(debMust(t, nil, "dpkg-deb", "--field", deb, name))
	}
	version = field("Version")
	if out, err := debRun(cmdTimeout, nil, "dpkg", "--validate-version", version); err != nil {
		t.Errorf("Version %q is not a valid Debian version: %v\n%s", version, err, out)
	}
	if want := "immutd_" + version + "_amd64.deb"; filepath.Base(deb) != want {
		t.Errorf("package file %s, want %s", filepath.Base(deb), want)
	}
	for name, want := range map[string]string{"Package": pkg, "Architecture": "amd64", "Depends": "systemd | adduser"} {
		if got := field(name); got != want {
			t.Errorf("%s: %q, want %q", name, got, want)
		}
	}
	return deb, version
}

// checkContents checks the file list of the package, every mode and
// owner, its conffiles and its maintainer scripts.
func checkContents(t *testing.T, repo, deb string) {
	t.Helper()
	const (
		exe  = "-rwxr-xr-x root/root"
		file = "-rw-r--r-- root/root"
		dir  = "drwxr-xr-x root/root"
	)
	want := map[string]string{
		"./usr/bin/immutd":                                       exe,
		"./lib/systemd/system/immutd.service":                    file,
		"./usr/lib/sysusers.d/immutd.conf":                       file,
		"./usr/lib/tmpfiles.d/immutd.conf":                       file,
		"./usr/share/immutd/prometheus/immutd.rules.yml":         file,
		"./usr/share/immutd/grafana/immutd-dashboard.json":       file,
		"./usr/share/immutd/systemd/immutd-docker.conf":          file,
		"./usr/share/immutd/examples/web.hcl":                    file,
		"./etc/immutd/":                                          dir,
		"./etc/immutd/fleets.d/":                                 dir,
		"./etc/immutd/agent.hcl":                                 "-rw-r----- root/root",
		"./usr/share/immutd/images/sampleapp-v1/manifest.json":   file,
		"./usr/share/immutd/images/sampleapp-v1/config/app.conf": file,
		"./usr/share/immutd/images/sampleapp-v1/bin/sampleapp":   exe,
		"./usr/share/immutd/images/sampleapp-v2/manifest.json":   file,
		"./usr/share/immutd/images/sampleapp-v2/config/app.conf": file,
		"./usr/share/immutd/images/sampleapp-v2/bin/sampleapp":   exe,
	}
	got := map[string]entry{}
	for line := range strings.Lines(debMust(t, nil, "dpkg-deb", "--contents", deb)) {
		// -rw-r--r-- root/root  6135 2026-12-01 19:54 ./lib/systemd/system/immutd.service
		f := strings.Fields(line)
		if len(f) != 6 {
			t.Errorf("dpkg-deb --contents: unexpected line %q", line)
			continue
		}
		got[f[5]] = entry{f[0], f[1]}
	}
	for path, w := range want {
		e, ok := got[path]
		if !ok {
			t.Errorf("the package has no %s", path)
		} else if e.perms+" "+e.owner != w {
			t.Errorf("%s: %s %s, want %s", path, e.perms, e.owner, w)
		}
	}
	for path, e := range got {
		if strings.Contains(path, "/usr/local") {
			t.Errorf("%s: a package installs nothing under /usr/local", path)
		}
		if _, ok := want[path]; ok {
			continue
		}
		if e.perms+" "+e.owner != dir {
			t.Errorf("unexpected entry %s (%s %s)", path, e.perms, e.owner)
		}
	}

	if c := strings.TrimSpace(debMust(t, nil, "dpkg-deb", "--info", deb, "conffiles")); c != "/etc/immutd/agent.hcl" {
		t.Errorf("conffiles: %q, want /etc/immutd/agent.hcl", c)
	}
	ctrl := filepath.Join(t.TempDir(), "DEBIAN")
	debMust(t, nil, "dpkg-deb", "--control", deb, ctrl)
	for _, name := range []string{"postinst", "prerm", "postrm"} {
		path := filepath.Join(ctrl, name)
		fi, err := os.Stat(path)
		if err != nil {
			t.Errorf("no %s in the package: %v", name, err)
			continue
		}
		if fi.Mode().Perm() != 0o755 {
			t.Errorf("%s: mode %04o, want 0755", name, fi.Mode().Perm())
		}
		text := debReadFile(t, path)
		if src := debReadFile(t, filepath.Join(repo, "configs/packaging", name)); text != src {
			t.Errorf("%s in the package differs from configs/packaging/%s", name, name)
		}
		if !strings.HasPrefix(text, "#!/bin/sh\n") || !strings.Contains(text, "\nset -e\n") {
			t.Errorf("%s: must be a #!/bin/sh script with set -e", name)
		}
		// /bin/sh is dash on Debian: a POSIX shell without bash's extensions.
		if out, err := debRun(cmdTimeout, nil, "sh", "-n", path); err != nil {
			t.Errorf("sh -n %s: %v\n%s", name, err, out)
		}
	}
	if exists(filepath.Join(ctrl, "preinst")) {
		t.Errorf("the package has a preinst; nfpm.yaml names none")
	}
}

// checkInstalled checks an installed package: the user, the directories
// and their owners, the files against the repository's.
func checkInstalled(t *testing.T, repo, version string) {
	t.Helper()
	if s := status(t); s != "install ok installed" {
		t.Fatalf("dpkg status %q, want install ok installed", s)
	}
	if out, err := debRun(cmdTimeout, nil, "dpkg-query", "-W", "-f=${Version}", pkg); err != nil || out != version {
		t.Errorf("installed version %q (%v), want %q", out, err, version)
	}
	u, err := user.Lookup(pkg)
	if err != nil {
		t.Fatalf("no immutd user after install: %v", err)
	}
	g, err := user.LookupGroup(pkg)
	if err != nil {
		t.Fatalf("no immutd group after install: %v", err)
	}
	if u.Gid != g.Gid || u.HomeDir != "/var/lib/immutd" {
		t.Errorf("immutd user: gid %s home %s, want the immutd group (%s) and /var/lib/immutd", u.Gid, u.HomeDir, g.Gid)
	}
	if uid, _ := strconv.Atoi(u.Uid); uid == 0 || uid >= 1000 {
		t.Errorf("immutd user: uid %s, want a system uid (1-999)", u.Uid)
	}
	if shell := passwdField(t, pkg, 6); shell != "/usr/sbin/nologin" {
		t.Errorf("immutd user: shell %q, want /usr/sbin/nologin", shell)
	}
	checkOwner(t, "/etc/immutd/agent.hcl", "root", pkg, 0o640)
	checkOwner(t, "/etc/immutd", "root", "root", fs.ModeDir|0o755)
	checkOwner(t, "/etc/immutd/fleets.d", "root", "root", fs.ModeDir|0o755)
	checkOwner(t, "/var/lib/immutd", pkg, pkg, fs.ModeDir|0o750)
	checkOwner(t, "/usr/bin/immutd", "root", "root", 0o755)

	// The files are the repository's, the unit with make install
	// PREFIX=/usr's paths.
	render := func(s string) string { return strings.ReplaceAll(s, "/usr/local/", "/usr/") }
	for dst, src := range map[string]string{
		"/usr/lib/sysusers.d/immutd.conf":                     systemdFile(t, repo, "immutd.sysusers"),
		"/usr/lib/tmpfiles.d/immutd.conf":                     systemdFile(t, repo, "immutd.tmpfiles"),
		"/usr/share/immutd/systemd/immutd-docker.conf":        systemdFile(t, repo, "immutd-docker.conf"),
		"/lib/systemd/system/immutd.service":                  render(systemdFile(t, repo, "immutd.service")),
		"/usr/share/immutd/prometheus/immutd.rules.yml":       debReadFile(t, filepath.Join(repo, "configs/prometheus/immutd.rules.yml")),
		"/usr/share/immutd/grafana/immutd-dashboard.json":     debReadFile(t, filepath.Join(repo, "configs/grafana/immutd-dashboard.json")),
		"/usr/share/immutd/examples/web.hcl":                  render(debReadFile(t, filepath.Join(repo, "configs/fleets.d/web.hcl"))),
		"/etc/immutd/agent.hcl":                               debReadFile(t, filepath.Join(repo, "configs/agent.hcl")),
		"/usr/share/immutd/images/sampleapp-v1/manifest.json": debReadFile(t, filepath.Join(repo, "configs/images/sampleapp-v1/manifest.json")),
		"/usr/share/immutd/images/sampleapp-v2/manifest.json": debReadFile(t, filepath.Join(repo, "configs/images/sampleapp-v2/manifest.json")),
	} {
		got, err := os.ReadFile(dst)
		if err != nil {
			t.Errorf("not installed: %v", err)
		} else if string(got) != src {
			t.Errorf("%s differs from the repository's file", dst)
		}
	}
	unit := debReadFile(t, "/lib/systemd/system/immutd.service")
	if !strings.Contains(unit, "\nExecStart=/usr/bin/immutd agent -config /etc/immutd/agent.hcl\n") || strings.Contains(unit, "/usr/local") {
		t.Errorf("the installed unit does not run /usr/bin/immutd, or names /usr/local")
	}
	if !strings.Contains(debReadFile(t, "/usr/share/immutd/examples/web.hcl"), `"/usr/share/immutd/images/sampleapp-v1"`) {
		t.Errorf("the example fleet does not name the installed image /usr/share/immutd/images/sampleapp-v1")
	}
	// Every installed file has the checksum dpkg recorded for it.
	if out, err := debRun(cmdTimeout, nil, "dpkg", "--verify", pkg); err != nil || strings.TrimSpace(out) != "" {
		t.Errorf("dpkg --verify %s: %v\n%s", pkg, err, out)
	}
	// Nothing is enabled or started by the package.
	if exists("/etc/systemd/system/multi-user.target.wants/immutd.service") {
		t.Errorf("the package enabled the service")
	}
}

// checkRemoved checks what dpkg --remove leaves: configuration and state,
// no program files.
func checkRemoved(t *testing.T, wantStatus string) {
	t.Helper()
	if s := status(t); s != wantStatus {
		t.Errorf("dpkg status %q, want %q", s, wantStatus)
	}
	for _, p := range []string{"/usr/bin/immutd", "/lib/systemd/system/immutd.service", "/usr/lib/sysusers.d/immutd.conf", "/usr/lib/tmpfiles.d/immutd.conf", "/usr/share/immutd"} {
		if exists(p) {
			t.Errorf("remove left %s", p)
		}
	}
	if !exists("/etc/immutd/agent.hcl") {
		t.Errorf("remove deleted the conffile /etc/immutd/agent.hcl")
	}
	if !exists("/var/lib/immutd") {
		t.Errorf("remove deleted /var/lib/immutd")
	}
}

// checkBinary runs the installed immutd and checks that it reports the
// version and revision the package version was made from.
func checkBinary(t *testing.T, repo, version string) {
	t.Helper()
	out := strings.TrimSpace(debMust(t, nil, "/usr/bin/immutd", "version"))
	m := regexp.MustCompile(`^immutd (\S+) \(revision (\S+), go[0-9.]+\S*\)$`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("/usr/bin/immutd version: %q, want immutd VERSION (revision REV, goX)", out)
	}
	t.Logf("/usr/bin/immutd version: %s", out)
	describe, rev := m[1], m[2]
	if describe == "dev" || rev == "unknown" {
		t.Errorf("/usr/bin/immutd reports no version from git: %q", out)
		return
	}
	// The package version is debversion's of what the binary reports (for
	// the commit it names, even if HEAD moved since the build).
	when := strings.TrimSpace(debMust(t, nil, "git", "-C", repo, "log", "-1", "--format=%ct", rev))
	commit := strings.TrimSpace(debMust(t, nil, "git", "-C", repo, "rev-parse", rev))
	want := strings.TrimSpace(debMust(t, nil, "sh", filepath.Join(repo, "configs/packaging/debversion"), describe, when, commit))
	if version != want {
		t.Errorf("package version %q, but the binary reports %q (revision %s): want %q", version, describe, rev, want)
	}
}

// checkUnitVerifies runs systemd-analyze verify on the installed unit, as
// systemd/unit_test.go does on the repository's: it works without a
// running systemd, and it reports problems as lines that name the unit,
// not always in its exit status.
func checkUnitVerifies(t *testing.T) {
	t.Helper()
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Logf("no systemd-analyze here: the installed unit is not verified (%v)", err)
		return
	}
	out, err := debRun(cmdTimeout, nil, analyze, "verify", "/lib/systemd/system/immutd.service")
	var about []string
	for line := range strings.Lines(out) {
		if strings.Contains(line, "immutd") {
			about = append(about, strings.TrimSpace(line))
		}
	}
	if err != nil || len(about) > 0 {
		t.Errorf("systemd-analyze verify /lib/systemd/system/immutd.service: %v\n%s", err, out)
	} else if out != "" {
		t.Logf("systemd-analyze verify printed (about other units):\n%s", out)
	}
}

func systemdFile(t *testing.T, repo, name string) string {
	return debReadFile(t, filepath.Join(repo, "systemd", name))
}

// passwdField returns field n (0-based) of name's line in /etc/passwd.
func passwdField(t *testing.T, name string, n int) string {
	t.Helper()
	for line := range strings.Lines(debReadFile(t, "/etc/passwd")) {
		if f := strings.Split(strings.TrimSpace(line), ":"); len(f) == 7 && f[0] == name {
			return f[n]
		}
	}
	t.Fatalf("no %s in /etc/passwd", name)
	return ""
}

// checkOwner checks the owner, group and mode (type and permissions) of
// path.
func checkOwner(t *testing.T, path, owner, group string, mode fs.FileMode) {
	t.Helper()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Errorf("%v", err)
		return
	}
	st := fi.Sys().(*syscall.Stat_t)
	u, err := user.LookupId(strconv.Itoa(int(st.Uid)))
	uname := strconv.Itoa(int(st.Uid))
	if err == nil {
		uname = u.Username
	}
	g, err := user.LookupGroupId(strconv.Itoa(int(st.Gid)))
	gname := strconv.Itoa(int(st.Gid))
	if err == nil {
		gname = g.Name
	}
	if uname != owner || gname != group || fi.Mode()&(fs.ModeType|fs.ModePerm) != mode {
		t.Errorf("%s: %s %s:%s, want %s %s:%s", path, fi.Mode(), uname, gname, mode, owner, group)
	}
}

// fallbackPath returns a PATH of symlinks to the test's programs without
// systemd-sysusers, systemd-tmpfiles and systemctl, in which adduser and
// addgroup log their arguments to the returned file before they run.
func fallbackPath(t *testing.T) (path, calls string) {
	t.Helper()
	dir := t.TempDir()
	bin := filepath.Join(dir, "bin")
	calls = filepath.Join(dir, "calls.log")
	if err := os.Mkdir(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(calls, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"adduser", "addgroup"} {
		real, err := exec.LookPath(name)
		if err != nil {
			t.Fatal(err)
		}
		script := fmt.Sprintf("#!/bin/sh\necho \"%s $*\" >> %s\nexec %s \"$@\"\n", name, calls, real)
		if err := os.WriteFile(filepath.Join(bin, name), []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	skip := map[string]bool{"systemd-sysusers": true, "systemd-tmpfiles": true, "systemctl": true}
	dirs := append(filepath.SplitList(os.Getenv("PATH")), "/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")
	for _, d := range dirs {
		entries, err := os.ReadDir(d)
		if err != nil {
			continue
		}
		for _, e := range entries {
			link := filepath.Join(bin, e.Name())
			if skip[e.Name()] || exists(link) {
				continue
			}
			if err := os.Symlink(filepath.Join(d, e.Name()), link); err != nil {
				t.Fatal(err)
			}
		}
	}
	for name := range skip {
		if exists(filepath.Join(bin, name)) {
			t.Fatalf("%s is in the PATH without systemd tools", name)
		}
	}
	return bin, calls
}

// startAsImmutd starts a process as the immutd user (a stand-in for a
// fleet instance) and returns a function that stops it. It waits until
// the process runs as immutd.
func startAsImmutd(t *testing.T) (stop func()) {
	t.Helper()
	u, err := user.Lookup(pkg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	cmd := exec.CommandContext(ctx, "setpriv", "--reuid="+u.Uid, "--regid="+u.Gid, "--clear-groups", "sleep", "300")
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		_ = cmd.Process.Kill()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Errorf("process %d did not exit", cmd.Process.Pid)
		}
		cancel()
	}
	t.Cleanup(stop)
	proc := fmt.Sprintf("/proc/%d", cmd.Process.Pid)
	for deadline := time.Now().Add(10 * time.Second); ; {
		if fi, err := os.Stat(proc); err == nil && strconv.Itoa(int(fi.Sys().(*syscall.Stat_t).Uid)) == u.Uid {
			return stop
		}
		if time.Now().After(deadline) {
			t.Fatalf("setpriv did not become user immutd (uid %s) within 10s", u.Uid)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// deleteUser deletes the immutd user and group unless they existed before
// the test.
func deleteUser(t *testing.T, hadUser, hadGroup bool) {
	t.Helper()
	if !hadUser && lookupUser(pkg) {
		if out, err := debRun(cmdTimeout, nil, "userdel", pkg); err != nil {
			t.Errorf("userdel %s: %v\n%s", pkg, err, out)
		}
	}
	// userdel deletes the user's own group too, when nobody else is in it.
	if !hadGroup && lookupGroup(pkg) {
		if out, err := debRun(cmdTimeout, nil, "groupdel", pkg); err != nil {
			t.Errorf("groupdel %s: %v\n%s", pkg, err, out)
		}
	}
}
