package e2e

import (
	"bytes"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/immutd/immutd/internal/api"
	"github.com/immutd/immutd/internal/state"
)

// The qemu provider end to end: the real immutd binary keeps a fleet of
// three real VMs (QEMU, TCG on these machines) of the sample app's golden
// VM image, which `make vm-images` builds (make test does).

// vmImage is the directory of the sample app's VM image, version v1 or v2.
func vmImage(t testing.TB, version string) string {
	t.Helper()
	dir := filepath.Join(repoRoot, "build", "vm-images", "sampleapp-"+version)
	if _, err := os.Stat(filepath.Join(dir, "manifest.json")); err != nil {
		t.Fatalf("%s is missing: run `make vm-images` (make test does)", dir)
	}
	return dir
}

// vmFleetFile is the HCL of a three-VM fleet of the sample app. The app
// may be asked to write (-allow-writes), so the test can change a VM from
// inside; health checks give a VM a minute and a half to boot under TCG
// on a loaded machine.
func vmFleetFile(t testing.TB, version string) string { return vmFleetSized(t, version, 3) }

// vmFleetSized is vmFleetFile with size VMs.
func vmFleetSized(t testing.TB, version string, size int) string {
	return fmt.Sprintf(`fleet "vm" {
  size     = %d
  provider = "qemu"
  image    = %q
  launch {
    stop_grace = "5s"
    args       = ["-allow-writes"]
  }
  health {
    http "ready" {
      path                = "/healthz"
      interval            = "1s"
      timeout             = "1s"
      unhealthy_threshold = 3
      startup_timeout     = "90s"
    }
  }
  drift {
    interval = "1s"
  }
  rollout {
    max_surge       = 1
    max_unavailable = 0
  }
}
`, size, vmImage(t, version))
}

// qemuProcesses are the live QEMU processes of VMs under the agent's data
// directory (QEMU daemonizes into /, so they are found by the -pidfile
// in their command line, not by their working directory).
func qemuProcesses(dataDir string) []int {
	marker := []byte("\x00-pidfile\x00" + dataDir + "/")
	return liveProcesses(func(proc string) bool {
		b, err := os.ReadFile(filepath.Join(proc, "cmdline"))
		return err == nil && bytes.Contains(b, marker)
	})
}

// qemuPID is the QEMU process of instance in, from its ProviderRef ("PID tcg").
func qemuPID(t testing.TB, in api.Instance) int {
	t.Helper()
	var pid int
	if _, err := fmt.Sscanf(in.ProviderRef, "%d", &pid); err != nil {
		t.Fatalf("instance %s has provider ref %q, want \"PID ACCEL\"", in.ID, in.ProviderRef)
	}
	return pid
}

func newQEMUEnv(t testing.TB) *env {
	e := newEnv(t, envOpts{extra: `provider "qemu" {}`})
	// VMs outlive the agent on purpose; the test owns them.
	t.Cleanup(func() {
		for _, pid := range qemuProcesses(e.dataDir) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	})
	return e
}

// TestQEMUFleetIsKeptImmutable runs one agent with a three-VM fleet and
// checks, in order: a killed QEMU is replaced; a guest writing to its root
// disk, and one writing a file to its writable filesystem, are replaced
// with the evidence; a v1 -> v2 rollout is surge-first with the old VMs
// serving throughout; and a kill -9 of the agent mid-rollout launches no
// duplicate VM and converges. Consoles of terminated VMs are kept.
func TestQEMUFleetIsKeptImmutable(t *testing.T) {
	e := newQEMUEnv(t)
	e.writeFleet("vm.hcl", vmFleetFile(t, "v1"))
	e.start()
	f := e.waitHealthy("vm", 3, "", 3*time.Minute)
	for _, in := range f.Instances {
		if !strings.Contains(in.ProviderRef, "tcg") && !strings.Contains(in.ProviderRef, "kvm") {
			t.Fatalf("instance %s: provider ref %q does not say which accelerator runs it", in.ID, in.ProviderRef)
		}
	}
	if names := vmNames(e.dataDir); len(names) != 3 || len(distinct(names)) != 3 {
		t.Fatalf("QEMU processes of %v for a fleet of 3", names)
	}
	t.Logf("3 VMs healthy: %s (%s)", describe(f), f.Instances[0].ProviderRef)

	// A VM whose QEMU dies is exited and replaced.
	killed := f.Instances[0]
	after := e.lastSeq()
	if err := syscall.Kill(qemuPID(t, killed), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	ev := e.waitEvent(after, time.Minute, func(ev state.Event) bool {
		return ev.Action == "terminated" && ev.InstanceID == killed.ID
	})
	if ev.Reason != "exited" {
		t.Errorf("killed VM %s terminated for %q, want exited (evidence %v)", killed.ID, ev.Reason, ev.Evidence)
	}
	f = e.waitHealthy("vm", 3, "", 3*time.Minute, killed.ID)
	logPath := filepath.Join(e.dataDir, "qemu", "logs", killed.ID+".log")
	if b, err := os.ReadFile(logPath); err != nil || !bytes.Contains(b, []byte("vminit: app started")) {
		t.Errorf("the console of the killed VM is not kept at %s: %v %q", logPath, err, b)
	}

	// A guest that writes to its root disk, and one that adds a file to
	// its writable filesystem, are drifted and replaced with evidence.
	disk, share := f.Instances[0], f.Instances[1]
	after = e.lastSeq()
	post(t, "http://"+disk.Address+"/write?path=/dev/vda", "written in place")
	post(t, "http://"+share.Address+"/write?path=/mnt/instance/patched.conf", "patched")
	for _, c := range []struct {
		in   api.Instance
		want string
	}{{disk, "root disk written: "}, {share, "added patched.conf"}} {
		ev := e.waitEvent(after, time.Minute, func(ev state.Event) bool {
			return ev.Action == "terminated" && ev.InstanceID == c.in.ID
		})
		if ev.Reason != "drift_mutated" || !strings.Contains(strings.Join(ev.Evidence, "; "), c.want) {
			t.Errorf("VM %s terminated for %q with evidence %v; want drift_mutated with %q", c.in.ID, ev.Reason, ev.Evidence, c.want)
		}
		t.Logf("VM %s replaced: %s %v", c.in.ID, ev.Reason, ev.Evidence)
	}
	e.waitHealthy("vm", 3, "", 3*time.Minute, disk.ID, share.ID)

	rollVMs(t, e)
}

// rollVMs rolls the fleet to v2, sampling that three healthy VMs answer
// throughout and that no more than size+max_surge VMs exist, kills the
// agent with SIGKILL once the first v2 VM is up, and checks convergence
// without a duplicate launch.
func rollVMs(t *testing.T, e *env) {
	old := ids(e.fleet("vm"))
	v1 := e.fleet("vm").ImageDigest
	e.writeFleet("vm.hcl", vmFleetFile(t, "v2"))
	deadline := time.Now().Add(6 * time.Minute)
	samples, midway, maxVMs, crashed := 0, 0, 0, false
	// After the agent's restart its status has no verdicts until its own
	// probes come back (every VM "starting"): until it judges three VMs
	// healthy again, the VMs that served before the kill are asked
	// directly, and must answer.
	var rejudging map[string]string // id -> address of the VMs serving at the kill
	rejudged := 0
	for {
		// Distinct VMs: while QEMU daemonizes, its parent and the VM
		// process share one command line for a moment.
		if n := len(distinct(vmNames(e.dataDir))); n > 4 {
			t.Fatalf("%d VMs (%v), more than size 3 + max_surge 1: %s", n, vmNames(e.dataDir), describe(e.fleet("vm")))
		} else {
			maxVMs = max(maxVMs, n)
		}
		c := e.checkServing("vm")
		f := c.after
		if rejudging != nil && c.healthy < 3 {
			for _, in := range f.Instances {
				if addr, ok := rejudging[in.ID]; ok && in.State == "starting" {
					if err := answerErr(addr); err != nil {
						t.Fatalf("VM %s stopped answering while the restarted agent re-probed: %v: %s", in.ID, err, describe(f))
					}
				}
			}
			rejudged++
			if time.Now().After(deadline) {
				t.Fatalf("the restarted agent did not judge three VMs healthy in the rollout's 6m: %s", describe(f))
			}
			time.Sleep(50 * time.Millisecond)
			continue
		}
		rejudging = nil
		if c.settled {
			samples++
			if c.healthy < 3 || c.serving < 3 {
				t.Fatalf("sample %d: %d VMs healthy, %d of them answering, during the rollout: %s; not answering: %v",
					samples, c.healthy, c.serving, describe(f), c.silent)
			}
		}
		newUp := 0
		for _, in := range f.Instances {
			if in.ImageDigest != v1 && in.State == "healthy" {
				newUp++
			}
		}
		if newUp > 0 && c.settled {
			midway++
		}
		if newUp == 1 && !crashed {
			// Mid-rollout: one new VM up, old ones still to go.
			rejudging = map[string]string{}
			for _, in := range f.Instances {
				if in.State == "healthy" {
					rejudging[in.ID] = in.Address
				}
			}
			e.kill9()
			crashed = true
			t.Logf("agent killed with SIGKILL mid-rollout: %s", describe(f))
			e.start()
		}
		done := crashed && f.ImageDigest != v1 && len(f.Instances) == 3
		for _, in := range f.Instances {
			done = done && in.ImageDigest == f.ImageDigest && in.State == "healthy" && in.UpToDate && !old[in.ID]
		}
		if done {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("rollout did not finish in 6m: %s", describe(e.fleet("vm")))
		}
		time.Sleep(50 * time.Millisecond)
	}
	if samples < 10 || midway < 3 {
		t.Fatalf("only %d settled samples (%d with a new VM up): the rollout was not observed", samples, midway)
	}
	// Every VM process there is, is one the fleet lists.
	e.waitFor("exactly 3 VMs", 30*time.Second, func() (bool, string) {
		names := vmNames(e.dataDir)
		return len(names) == 3 && len(distinct(names)) == 3, fmt.Sprintf("QEMU processes of %v", names)
	})
	launched := map[string]int{}
	for _, ev := range e.events() {
		if ev.Action == "launched" {
			launched[ev.InstanceID]++
		}
	}
	for id, n := range launched {
		if n > 1 {
			t.Fatalf("VM %s launched %d times", id, n)
		}
	}
	t.Logf("rolled to v2 across an agent crash: %d settled samples (%d with a new VM up), at most %d VMs; %d samples while the restarted agent re-probed", samples, midway, maxVMs, rejudged)
}

func post(t testing.TB, url, body string) {
	t.Helper()
	resp, err := http.Post(url, "text/plain", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("POST %s: %s", url, resp.Status)
	}
}

// vmNames are the instance ids (QEMU's -name) of the VMs under dataDir.
func vmNames(dataDir string) []string {
	var out []string
	for _, pid := range qemuProcesses(dataDir) {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		args := strings.Split(string(b), "\x00")
		for i := range args {
			if args[i] == "-name" && i+1 < len(args) {
				out = append(out, args[i+1])
			}
		}
	}
	return out
}

func distinct(names []string) map[string]bool {
	out := map[string]bool{}
	for _, n := range names {
		out[n] = true
	}
	return out
}

// TestQEMUUnusableHostFailsAtStart: an agent configured for VMs on a host
// that cannot run them refuses to start, saying why, instead of failing
// at the first launch.
func TestQEMUUnusableHostFailsAtStart(t *testing.T) {
	cases := []struct{ block, want string }{
		{`provider "qemu" { binary = "/nonexistent/qemu-system-x86_64" }`, "this host cannot run VMs: /nonexistent/qemu-system-x86_64 not found"},
	}
	if ok, _ := kvmOnHost(); !ok {
		cases = append(cases, struct{ block, want string }{`provider "qemu" { accel = "kvm" }`, "but KVM is not usable on this host: "})
	}
	for _, c := range cases {
		e := newEnv(t, envOpts{extra: c.block})
		cmd := exec.Command(filepath.Join(binDir, "immutd"), "agent", "-config", e.cfgPath)
		out, err := cmd.CombinedOutput()
		if err == nil {
			t.Fatalf("agent with %s started and exited 0", c.block)
		}
		if !strings.Contains(string(out), c.want) {
			t.Fatalf("agent with %s: %v; output does not say %q:\n%s", c.block, err, c.want, out)
		}
	}
}

// kvmOnHost says whether the CPU shows hardware virtualization.
func kvmOnHost() (bool, error) {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return false, err
	}
	return bytes.Contains(b, []byte(" vmx")) || bytes.Contains(b, []byte(" svm")), nil
}
