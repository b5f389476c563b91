package systemd_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestInstallProducesAServiceThatStarts runs `make install` into an empty
// root with PREFIX=/usr, checks that every installed path follows the
// prefix and that the agent file is readable by the service's group
// only, then starts the unit's ExecStart in that root the way systemd
// would: as the unit's User and Group, with the state directory systemd
// makes. The example fleet must come up healthy. No systemd runs here,
// so the root is entered with chroot, in namespaces of the test's own
// (mount, pid and network: nothing it starts outlives it or listens on
// the host's ports). It needs root, as make install does.
func TestInstallProducesAServiceThatStarts(t *testing.T) {
	if testing.Short() {
		t.Skip("runs make install, systemd-sysusers and unshare as root: skipped in -short mode (unit tests only)")
	}
	if os.Geteuid() != 0 {
		t.Fatal("make install and this test need root (CI runs as root)")
	}
	for _, tool := range []string{"unshare", "chroot", "ip", "systemd-sysusers"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s not found: %v", tool, err)
		}
	}
	repo, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	make := exec.CommandContext(ctx, "make", "-C", repo, "install", "DESTDIR="+root, "PREFIX=/usr")
	if out, err := make.CombinedOutput(); err != nil {
		t.Fatalf("make install: %v\n%s", err, out)
	}

	unit := readFile(t, filepath.Join(root, "etc/systemd/system/immutd.service"))
	d := directives(t, unit)
	if got := d["Service.ExecStart"]; len(got) != 1 || got[0] != "/usr/bin/immutd agent -config /etc/immutd/agent.hcl" {
		t.Errorf("installed unit: ExecStart=%v", got)
	}
	fleet := readFile(t, filepath.Join(root, "etc/immutd/fleets.d/web.hcl"))
	for name, text := range map[string]string{"unit": unit, "example fleet": fleet} {
		if strings.Contains(text, "/usr/local") {
			t.Errorf("installed %s still names /usr/local with PREFIX=/usr", name)
		}
	}
	if !strings.Contains(fleet, `"/usr/share/immutd/images/sampleapp-v1"`) {
		t.Errorf("installed example fleet does not name /usr/share/immutd/images/sampleapp-v1:\n%s", fleet)
	}
	uid, gid := lookup(t, filepath.Join(root, "etc/passwd"), "immutd"), lookup(t, filepath.Join(root, "etc/group"), "immutd")
	fi, err := os.Stat(filepath.Join(root, "etc/immutd/agent.hcl"))
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	if fi.Mode().Perm() != 0o640 || st.Uid != 0 || int(st.Gid) != gid {
		t.Errorf("agent.hcl: mode %04o owner %d:%d, want 0640 root:immutd (0:%d)", fi.Mode().Perm(), st.Uid, st.Gid, gid)
	}
	for _, p := range []string{"usr/bin/immutd", "usr/share/immutd/images/sampleapp-v1/manifest.json", "usr/share/immutd/systemd/immutd-docker.conf",
		"usr/share/immutd/prometheus/immutd.rules.yml", "usr/share/immutd/grafana/immutd-dashboard.json", "etc/sysusers.d/immutd.conf", "etc/tmpfiles.d/immutd.conf"} {
		if _, err := os.Stat(filepath.Join(root, p)); err != nil {
			t.Errorf("not installed: /%s", p)
		}
	}
	if t.Failed() {
		return
	}

	// What systemd does before ExecStart: StateDirectory=immutd (owned by
	// the user, mode 0750), /dev and /proc; then it runs ExecStart as
	// User=immutd Group=immutd.
	for _, dir := range []string{"var/lib/immutd", "dev", "proc", "tmp"} {
		if err := os.MkdirAll(filepath.Join(root, dir), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	must(t, os.Chown(filepath.Join(root, "var/lib/immutd"), uid, gid))
	must(t, os.Chmod(filepath.Join(root, "var/lib/immutd"), 0o750))
	execStart := strings.Fields(d["Service.ExecStart"][0])
	script := fmt.Sprintf(`set -u
ip link set lo up
mount --rbind /dev %[1]s/dev
mount -t proc proc %[1]s/proc
chroot --userspec=%[2]d:%[3]d --groups=%[3]d %[1]s %[4]s >%[1]s/agent.log 2>&1 &
for i in $(seq 300); do
  out=$(chroot %[1]s /usr/bin/immutd status 2>&1)
  if [ "$(printf '%%s\n' "$out" | grep -cE '^web-[0-9a-f]+ +web +healthy ')" = 3 ]; then
    printf '%%s\n' "$out"
    exit 0
  fi
  sleep 0.5
done
printf 'no 3 healthy instances within 150s; last status:\n%%s\nagent log:\n' "$out"
tail -n 40 %[1]s/agent.log
exit 1
`, root, uid, gid, strings.Join(execStart, " "))
	run := exec.CommandContext(ctx, "unshare", "--pid", "--fork", "--mount", "--mount-proc", "--net", "sh", "-c", script)
	out, err := run.CombinedOutput()
	if err != nil {
		t.Fatalf("the installed service did not start its fleet: %v\n%s", err, out)
	}
	t.Logf("the installed agent, run as %d:%d in the installed root, keeps its fleet:\n%s", uid, gid, out)
}

// lookup returns the numeric id of name in a passwd or group file.
func lookup(t *testing.T, file, name string) int {
	t.Helper()
	for _, line := range strings.Split(readFile(t, file), "\n") {
		f := strings.Split(line, ":")
		if len(f) >= 3 && f[0] == name {
			id, err := strconv.Atoi(f[2])
			if err != nil {
				t.Fatal(err)
			}
			return id
		}
	}
	t.Fatalf("no %s in %s", name, file)
	return 0
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
