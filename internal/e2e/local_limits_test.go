package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/immutd/immutd/internal/api"
	"github.com/immutd/immutd/internal/config"
)

// Tests of findings 4, 7 (drift inspection) and 12 of the trust audit,
// on the local provider.

// TestNoisyInstanceLogsAreCapped: an instance that writes 40 MB to its
// stdout as fast as it can leaves, once the agent has caught up, a log of
// at most log_max_size (and one rotated copy of half of it) on the log
// directory the operator chose, and keeps running. How far a log gets
// past the cap meanwhile depends on how fast the writer is and how soon
// the agent rotates (the agent instances write their log themselves, so
// that they never depend on it): the peak is logged, not asserted.
func TestNoisyInstanceLogsAreCapped(t *testing.T) {
	logs := filepath.Join(t.TempDir(), "instance-logs")
	e := newEnv(t, envOpts{extra: fmt.Sprintf("provider %q {\n  log_dir = %q\n  log_max_size = \"256KiB\"\n}\n", config.ProviderLocal, logs)})
	noisy := strings.Replace(fleetFile("web", 1, "v1", ""), `stop_grace = "2s"`, `stop_grace = "2s"
    command    = ["/bin/sh", "-c", "yes 'a noisy instance writes this line again and again' | head -c 40000000; exec bin/sampleapp"]`, 1)
	e.writeFleet("web.hcl", noisy)
	e.start()
	peak := int64(0)
	var f api.Fleet
	e.waitFor("the instance healthy and its logs within the cap", 2*time.Minute, func() (bool, string) {
		size := dirBytes(t, logs)
		peak = max(peak, size)
		f = e.fleet("web")
		healthy := len(f.Instances) == 1 && f.Instances[0].State == "healthy"
		return healthy && size <= 256<<10+128<<10, fmt.Sprintf("logs %d KiB, %s", size>>10, describe(f))
	})
	t.Logf("40 MB written: the logs peaked at %d KiB and settled within 384 KiB", peak>>10)
	id := f.Instances[0].ID
	if _, err := os.Stat(filepath.Join(logs, id+".log.1")); err != nil {
		t.Fatalf("no rotated log: %v", err)
	}
	if ev := findEvent(e.events(), "terminated", id); ev != nil {
		t.Fatalf("the noisy instance was terminated: %+v", ev)
	}
}

// TestFullDataDirIsNamedAndKillsNothing: when the agent's data directory
// (a small tmpfs the test mounts) is full, status and metrics say so,
// not only "no quorum", no instance is killed, and everything recovers
// once there is room again. Needs root for the mount.
func TestFullDataDirIsNamedAndKillsNothing(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("this test mounts a tmpfs and needs root (CI runs as root)")
	}
	// The mount point is the test's own directory, unmounted and removed
	// after the agent and its instances are gone (cleanups run last
	// registered first).
	data, err := os.MkdirTemp("", "immutd-e2e-data-")
	must(t, err)
	mounted := false
	t.Cleanup(func() {
		for _, pid := range processesUnder(data) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		for end := time.Now().Add(30 * time.Second); len(processesUnder(data)) > 0 && time.Now().Before(end); {
			time.Sleep(20 * time.Millisecond)
		}
		if mounted {
			if out, err := exec.Command("umount", data).CombinedOutput(); err != nil {
				t.Errorf("umount %s: %v %s", data, err, out)
			}
		}
		os.RemoveAll(data)
	})
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=64m", "immutd-e2e", data).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs: %v %s", err, out)
	}
	mounted = true
	e := newEnv(t, envOpts{dataDir: data})
	e.writeFleet("web.hcl", fleetFile("web", 1, "v1", ""))
	e.start()
	f := e.waitHealthy("web", 1, "", 30*time.Second)
	victim := f.Instances[0]
	filler := filepath.Join(e.dataDir, "filler")
	fh, err := os.Create(filler)
	must(t, err)
	buf := make([]byte, 1<<20)
	for {
		if _, err := fh.Write(buf); err != nil {
			break // ENOSPC
		}
	}
	fh.Close()
	e.waitFor("status to name the full data directory", 60*time.Second, func() (bool, string) {
		st, err := e.trystatus()
		if err != nil {
			return false, err.Error()
		}
		return !st.DataDir.Writable && strings.Contains(st.DataDir.Error, "no space left on device"), fmt.Sprintf("%+v", st.DataDir)
	})
	if m := get(t, "http://"+e.httpAddr+"/metrics"); !strings.Contains(m, "immutd_data_dir_writable 0") {
		t.Fatal("immutd_data_dir_writable is not 0")
	}
	out, _ := e.cli("status")
	if !strings.Contains(out, "DATA DIRECTORY NOT WRITABLE") {
		t.Fatalf("status does not say the data directory is full:\n%s", out)
	}
	var passes passCounter
	e.waitFor("three more reconcile passes or a leader that stepped down", 60*time.Second, func() (bool, string) {
		st, err := e.trystatus()
		if err != nil {
			return false, err.Error()
		}
		return st.Leader == "" || passes.passes(st) >= 3, "waiting"
	})
	if err := syscall.Kill(localPID(t, victim), 0); err != nil {
		t.Fatalf("the instance's process %s is gone: %v", victim.ProviderRef, err)
	}
	must(t, os.Remove(filler))
	e.waitFor("the agent to recover", 60*time.Second, func() (bool, string) {
		st, err := e.trystatus()
		if err != nil {
			return false, err.Error()
		}
		return st.DataDir.Writable && st.IsLeader, fmt.Sprintf("%+v leader %v", st.DataDir, st.IsLeader)
	})
	if g := e.waitHealthy("web", 1, "", 60*time.Second); g.Instances[0].ID != victim.ID {
		t.Fatalf("the instance was replaced: %s", describe(g))
	}
	if ev := findEvent(e.events(), "terminated", victim.ID); ev != nil {
		t.Fatalf("terminated: %+v", ev)
	}
}

// TestScaleToSixtyAndBack launches 60 instances at once: every one gets a
// port of its own, none exits at start, exactly 60 are launched, and
// status never shows more live instances than size + max_surge. Scaling
// back to 0 is not reported as drift of the instances being removed.
func TestScaleToSixtyAndBack(t *testing.T) {
	e := newEnv(t, envOpts{})
	fleet := func(size int) string {
		return fleetFile("web", size, "v1", "  rollout {\n    max_surge = 5\n  }\n  remediation {\n    max_parallel = 20\n  }\n")
	}
	e.writeFleet("web.hcl", fleet(1))
	e.start()
	e.waitHealthy("web", 1, "", 30*time.Second)
	e.writeFleet("web.hcl", fleet(60))
	mostLive := 0
	e.waitFor("60 healthy instances", 5*time.Minute, func() (bool, string) {
		f := e.fleet("web")
		live, healthy := 0, 0
		for _, in := range f.Instances {
			switch in.State {
			case "exited", "gone":
			default:
				live++
			}
			if in.State == "healthy" {
				healthy++
			}
		}
		mostLive = max(mostLive, live)
		return healthy == 60 && len(f.Instances) == 60, fmt.Sprintf("%d healthy of %d rows", healthy, len(f.Instances))
	})
	if mostLive > 65 {
		t.Errorf("status showed %d live instances for size 60 + max_surge 5", mostLive)
	}
	addrs := map[string]string{}
	for _, in := range e.fleet("web").Instances {
		if other, dup := addrs[in.Address]; dup {
			t.Errorf("instances %s and %s share %s", in.ID, other, in.Address)
		}
		addrs[in.Address] = in.ID
	}
	launched := 0
	for _, ev := range e.events() {
		switch {
		case ev.Action == "launched":
			launched++
		case ev.Action == "terminated":
			t.Errorf("instance %s terminated during a scale-up (%s): %v", ev.InstanceID, ev.Reason, ev.Evidence)
		}
	}
	if launched != 60 {
		t.Errorf("%d launches for 60 instances", launched)
	}
	e.writeFleet("web.hcl", fleet(0))
	e.waitFor("no instance left", 5*time.Minute, func() (bool, string) {
		f := e.fleet("web")
		return len(f.Instances) == 0, fmt.Sprintf("%d rows", len(f.Instances))
	})
	logs, err := os.ReadFile(filepath.Join(e.dir, "agent.log"))
	must(t, err)
	for _, msg := range []string{`"msg":"instance drifted"`, `"msg":"drift inspection failed"`} {
		if n := strings.Count(string(logs), msg); n > 0 {
			t.Errorf("the agent logged %s %d times while it scaled its own fleet", msg, n)
		}
	}
}
