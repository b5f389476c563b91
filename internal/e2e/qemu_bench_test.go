package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/immutd/immutd/internal/provider/qemu"
	"github.com/immutd/immutd/internal/vmimage"
)

// BenchmarkQEMU measures VMs of the sample app's golden VM image under
// the real binary, run with -benchtime 1x (several trials in its one
// iteration), against its baseline B measured in the same run: a bare
// qemu-system-x86_64 of the same image (same machine, accelerator,
// memory, kernel command line and devices, the disk attached read-only,
// no overlay), from the exec until its forwarded /healthz first answers
// 200, polled every 10ms; baseline and immutd trials alternate.
//
// It reports, each as p50/p95/max in milliseconds over qemuBenchTrials:
//   - launch: a fleet-file edit (size 1 -> 2) until the status shows the
//     new VM healthy (and, as launch_serving, until it first answered the
//     benchmark); the edit comes before the launch call, so this bounds
//     launch call -> healthy from above. Target: at most 1.2 B.
//   - kill: SIGKILL of a VM's QEMU until the status shows a healthy
//     replacement.
//
// and the resident memory (VmRSS) of each VM's QEMU in steady state,
// and of the bare one when it first answered.
func BenchmarkQEMU(b *testing.B) {
	e := newQEMUEnv(b)
	e.writeFleet("vm.hcl", vmFleetSized(b, "v1", 1))
	e.start()
	e.waitHealthy("vm", 1, "", 3*time.Minute)
	// Baseline and launch trials alternate, so that both see the machine
	// as it is at the time: boots under TCG vary by a second between runs.
	var base, launch, serving, kill []time.Duration
	var baseRSS, rss []int64
	for i := 0; i < qemuBenchTrials; i++ {
		bt, br := qemuBaseline(b)
		base, baseRSS = append(base, bt), append(baseRSS, br)
		known := ids(e.fleet("vm"))
		t0 := time.Now()
		e.writeFleet("vm.hcl", vmFleetSized(b, "v1", 2))
		servedAt, healthyAt := qemuReplaced(b, e, 2, known, "")
		launch, serving = append(launch, healthyAt.Sub(t0)), append(serving, servedAt.Sub(t0))
		e.writeFleet("vm.hcl", vmFleetSized(b, "v1", 1))
		e.waitHealthy("vm", 1, "", 3*time.Minute)
	}
	for i := 0; i < qemuBenchTrials; i++ {
		f := e.fleet("vm")
		victim := f.Instances[0]
		pid := qemuPID(b, victim)
		rss = append(rss, procValue(b, pid, "status", "VmRSS"))
		t0 := time.Now()
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			b.Fatal(err)
		}
		_, at := qemuReplaced(b, e, 1, ids(f), victim.ID)
		kill = append(kill, at.Sub(t0))
	}
	report := func(name string, ds []time.Duration) {
		b.ReportMetric(ms(percentile(ds, 0.5)), name+"_p50_ms")
		b.ReportMetric(ms(percentile(ds, 0.95)), name+"_p95_ms")
		b.ReportMetric(ms(percentile(ds, 1)), name+"_max_ms")
	}
	report("baseline", base)
	report("launch_serving", serving)
	report("launch", launch)
	b.ReportMetric(ms(median(base))*1.2, "launch_target_ms")
	report("kill", kill)
	b.ReportMetric(float64(medianInt(rss))/1024, "vm_rss_p50_MiB")
	b.ReportMetric(float64(medianInt(baseRSS))/1024, "baseline_rss_p50_MiB")
	b.Logf("baseline %v\nlaunch serving %v\nlaunch healthy %v\nkill %v\nrss kB %v, baseline rss kB %v", base, serving, launch, kill, rss, baseRSS)
}

const (
	qemuBenchTrials = 8
)

// qemuReplaced polls the status every 10ms until the fleet has n healthy
// VMs, at least one of them not in known, none of them without, and
// returns when it first saw a VM not in known answer 200 on /healthz
// (polled every 10ms as soon as the status lists its address) and when
// the status showed that.
func qemuReplaced(b *testing.B, e *env, n int, known map[string]bool, without string) (served, healthy time.Time) {
	b.Helper()
	deadline := time.Now().Add(3 * time.Minute)
	last := ""
	servedCh := make(chan time.Time, 1)
	watching := map[string]bool{}
	stop := make(chan struct{})
	defer close(stop)
	for time.Now().Before(deadline) {
		if st, err := e.trystatus(); err == nil {
			f, _ := fleetOf(st, "vm")
			count, fresh := 0, false
			for _, in := range f.Instances {
				if !known[in.ID] && in.Address != "" && !watching[in.ID] {
					watching[in.ID] = true
					go watchServing(in.Address, servedCh, stop)
				}
				if in.ID != without && in.State == "healthy" {
					count++
					fresh = fresh || !known[in.ID]
				}
			}
			if count == n && fresh {
				healthy = time.Now()
				select {
				case served = <-servedCh:
				case <-time.After(time.Minute):
					b.Fatalf("the status shows a new VM healthy, but it never answered the benchmark: %s", describe(f))
				}
				return served, healthy
			}
			last = describe(f)
		}
		time.Sleep(pollEvery)
	}
	b.Fatalf("status did not show %d healthy VMs with a new one within 3m: %s", n, last)
	return
}

// watchServing polls addr's /healthz every 10ms and sends the time of the
// first 200.
func watchServing(addr string, at chan<- time.Time, stop <-chan struct{}) {
	c := http.Client{Timeout: 200 * time.Millisecond}
	for {
		select {
		case <-stop:
			return
		default:
		}
		resp, err := c.Get("http://" + addr + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				select {
				case at <- time.Now():
				default:
				}
				return
			}
		}
		time.Sleep(pollEvery)
	}
}

func medianInt(xs []int64) int64 {
	if len(xs) == 0 {
		return 0
	}
	return slices.Sorted(slices.Values(xs))[len(xs)/2]
}

// qemuBaseline boots the image by hand once and returns the time from
// the exec to the first 200 and the RSS (kB) then.
func qemuBaseline(b *testing.B) (time.Duration, int64) {
	b.Helper()
	img := vmImage(b, "v1")
	man, err := vmimage.ReadManifest(img)
	if err != nil {
		b.Fatal(err)
	}
	{
		dir := b.TempDir()
		must(b, os.Mkdir(filepath.Join(dir, "share"), 0o755))
		port := freePort(b)
		launch, _ := json.Marshal(vmimage.GuestLaunch{ID: "bare", Fleet: "bare", Digest: "bare", GuestPort: man.GuestPort, Share: true})
		must(b, os.WriteFile(filepath.Join(dir, "launch.json"), launch, 0o644))
		cmdline := man.Cmdline
		if khz := qemu.HostTSCKHz(); khz > 0 {
			cmdline += " tsc_early_khz=" + strconv.Itoa(khz)
		}
		cmd := exec.Command("qemu-system-x86_64", "-nodefaults", "-no-user-config", "-display", "none",
			"-machine", man.Machine, "-accel", "tcg", "-m", "128", "-smp", "1",
			"-kernel", filepath.Join(img, man.Kernel), "-initrd", filepath.Join(img, man.Initrd), "-append", cmdline, "-no-reboot",
			"-serial", "file:"+filepath.Join(dir, "serial.log"),
			"-netdev", fmt.Sprintf("user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:%d-:%d", port, man.GuestPort), "-device", "virtio-net-device,netdev=net0",
			"-fw_cfg", "name="+vmimage.FwCfgLaunch+",file="+filepath.Join(dir, "launch.json"),
			"-fsdev", "local,id=share,security_model=mapped-xattr,path="+filepath.Join(dir, "share"), "-device", "virtio-9p-device,fsdev=share,mount_tag="+vmimage.ShareTag,
			"-drive", "file="+filepath.Join(img, man.Disk)+",if=none,id=root,format=raw,readonly=on", "-device", "virtio-blk-device,drive=root")
		t0 := time.Now()
		must(b, cmd.Start())
		ok := pollHealthy(fmt.Sprintf("127.0.0.1:%d", port), 2*time.Minute)
		took := time.Since(t0)
		var rss int64
		if ok {
			rss = procValue(b, cmd.Process.Pid, "status", "VmRSS")
		}
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if !ok {
			log, _ := os.ReadFile(filepath.Join(dir, "serial.log"))
			b.Fatalf("bare qemu did not answer within 2m; console:\n%s", log)
		}
		return took, rss
	}
}
