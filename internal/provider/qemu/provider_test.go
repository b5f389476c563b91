package qemu

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/immutd/immutd/internal/instance"
)

// waitUntil polls cond every 20ms until it holds or timeout passes.
func waitUntil(t *testing.T, what string, timeout time.Duration, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, last := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s; last: %s", timeout, what, last)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// bootOne launches one VM of the sample image and waits until it serves.
func bootOne(t *testing.T, p *Provider, id string, args ...string) instance.Observed {
	t.Helper()
	ctx := context.Background()
	d, err := p.Import(ctx, sampleImage(t, 1))
	if err != nil {
		t.Fatal(err)
	}
	obs, err := p.Launch(ctx, instance.LaunchRequest{InstanceID: id, Fleet: "f", ImageDigest: d, TemplateHash: "t",
		Launch: instance.Launch{Args: args}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Terminate(context.Background(), id, time.Second) })
	waitUntil(t, id+" to serve", 2*time.Minute, func() (bool, string) {
		resp, err := http.Get("http://" + obs.Address + "/healthz")
		if err != nil {
			return false, err.Error()
		}
		resp.Body.Close()
		return resp.StatusCode == 200, resp.Status
	})
	return obs
}

func TestNewRejectsBadOptions(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct {
		opts Options
		want string
	}{
		{Options{}, "dir is required"},
		{Options{Dir: dir, Accel: "hvf"}, `accel "hvf": want auto, kvm or tcg`},
		{Options{Dir: dir, BindHost: "example.com"}, `bind host "example.com" is not an IP address`},
		{Options{Dir: dir, BootSlots: 65}, "boot slots 65: want 1 to 64"},
		{Options{Dir: dir, LogMaxSize: 1000}, "below the minimum"},
		{Options{Dir: dir, Binary: "/nonexistent/qemu"}, "this host cannot run VMs: /nonexistent/qemu not found"},
	} {
		if _, err := New(c.opts); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("New(%+v): %v; want an error saying %q", c.opts, err, c.want)
		}
	}
}

// A record written before QEMU started, with no QEMU (the agent crashed
// between the two), is listed exited, and terminating it cleans it up.
func TestInterruptedLaunchIsExitedAndCleanedUp(t *testing.T) {
	needVMs(t)
	dir := t.TempDir()
	p := testProvider(t, dir)
	idir := p.instanceDir("cut")
	if err := os.MkdirAll(filepath.Join(idir, shareDir), 0o750); err != nil {
		t.Fatal(err)
	}
	if err := writeMeta(idir, meta{ID: "cut", Fleet: "f", ImageDigest: "sha256:" + strings.Repeat("a", 64), TemplateHash: "t",
		Address: "127.0.0.1:1", StartedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	list, err := p.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 1 || list[0].Phase != instance.Exited || !strings.Contains(list[0].ExitReason, "launch interrupted") {
		t.Fatalf("list: %+v; want cut exited for an interrupted launch", list)
	}
	if err := p.Terminate(context.Background(), "cut", time.Second); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(idir); !os.IsNotExist(err) {
		t.Fatalf("instance directory still there after terminate: %v", err)
	}
	// A directory without a record (a crash before the record was
	// written) is removed when a provider opens the directory.
	if err := os.MkdirAll(p.instanceDir("half"), 0o750); err != nil {
		t.Fatal(err)
	}
	testProvider(t, dir)
	if _, err := os.Lstat(p.instanceDir("half")); !os.IsNotExist(err) {
		t.Fatalf("unrecorded instance directory not removed at open: %v", err)
	}
}

// An agent killed after QEMU started but before it recorded QEMU's pid
// leaves a running VM behind a record without a pid. The VM is listed
// running (it occupies capacity; a replacement next to it would go past
// the fleet's surge), its pid is adopted from the pid file, and while
// there is no pid file yet (QEMU still daemonizing) it is found by its
// command line, listed running and killed by Terminate.
func TestInterruptedLaunchWithARunningQEMUIsAdopted(t *testing.T) {
	needVMs(t)
	p := testProvider(t, t.TempDir())
	for _, pidFileGone := range []bool{false, true} {
		id := fmt.Sprintf("cut-%v", pidFileGone)
		obs := bootOne(t, p, id)
		idir := p.instanceDir(id)
		m, err := p.readMeta(id)
		if err != nil {
			t.Fatal(err)
		}
		pid := m.PID
		m.PID, m.PIDStart = 0, 0
		if err := writeMeta(idir, m); err != nil {
			t.Fatal(err)
		}
		if pidFileGone {
			if err := os.Remove(filepath.Join(idir, pidFile)); err != nil {
				t.Fatal(err)
			}
		}
		list, err := p.List(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if len(list) != 1 || list[0].ID != id || list[0].Phase != instance.Running || list[0].Address != obs.Address {
			t.Fatalf("pid file gone %v: list %+v; want %s running at %s", pidFileGone, list, id, obs.Address)
		}
		m, err = p.readMeta(id)
		if err != nil {
			t.Fatal(err)
		}
		if want := pid; pidFileGone {
			if m.PID != 0 {
				t.Fatalf("record got pid %d with no pid file to prove it", m.PID)
			}
		} else if m.PID != want {
			t.Fatalf("record's pid after List: %d; want QEMU's %d, adopted from the pid file", m.PID, want)
		}
		// Launching the id again (the leader retrying its maybe-applied
		// launch) returns this VM, not a second one.
		again, err := p.Launch(context.Background(), instance.LaunchRequest{InstanceID: id, Fleet: "f", ImageDigest: obs.ImageDigest, TemplateHash: "t"})
		if err != nil || again.Address != obs.Address {
			t.Fatalf("launch again: %+v, %v; want the running VM at %s", again, err, obs.Address)
		}
		if err := p.Terminate(context.Background(), id, time.Second); err != nil {
			t.Fatal(err)
		}
		if left := instanceQEMUs(idir); len(left) != 0 {
			t.Fatalf("QEMU %v of %s still runs after terminate (pid was %d)", left, id, pid)
		}
	}
}

// Watch wakes the leader as soon as a VM's QEMU dies.
func TestWatchNotifiesWhenAVMDies(t *testing.T) {
	p := testProvider(t, t.TempDir())
	obs := bootOne(t, p, "watched")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	woke := make(chan struct{}, 16)
	go p.Watch(ctx, func() { woke <- struct{}{} })
	waitUntil(t, "Watch to watch the VM", time.Minute, func() (bool, string) {
		n := p.watching.Load()
		return n == 1, fmt.Sprintf("watching %d", n)
	})
	var pid int
	if _, err := fmt.Sscanf(obs.ProviderRef, "%d", &pid); err != nil {
		t.Fatal(err)
	}
	if err := unix.Kill(pid, unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	select {
	case <-woke:
	case <-time.After(30 * time.Second):
		t.Fatal("no notification within 30s of the VM's death")
	}
}

// A write to the root disk is drift that ignore_paths cannot hide; the
// guest's share is inspected file by file.
func TestInspectSeesRootDiskWrites(t *testing.T) {
	p := testProvider(t, t.TempDir())
	obs := bootOne(t, p, "writer", "-allow-writes")
	resp, err := http.Post("http://"+obs.Address+"/write?path=/dev/vda", "text/plain", strings.NewReader("x"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	// The QMP socket controls the VM: only the agent's user (and group)
	// may reach it, through the instance directory.
	for _, path := range []string{p.instancesDir, p.instanceDir("writer"), p.logDir} {
		if fi, err := os.Stat(path); err != nil || fi.Mode().Perm()&0o007 != 0 {
			t.Errorf("%s: mode %v, %v; want no access for others", path, fi.Mode(), err)
		}
	}
	f, err := p.Inspect(context.Background(), obs, []string{"**"})
	if err != nil {
		t.Fatal(err)
	}
	if f == nil || f.Kind != instance.DriftMutated || len(f.Evidence) != 1 || !strings.HasPrefix(f.Evidence[0], "root disk written: 4096 bytes in 1 writes") {
		t.Fatalf("finding %+v; want the root disk write, whatever is ignored", f)
	}
}

// Console logs are rotated above their size, and kept after their VM is
// gone, at most LogKeep of them.
func TestConsoleLogsRotateAndOutliveTheirVM(t *testing.T) {
	needVMs(t)
	dir := t.TempDir()
	p, err := New(Options{Dir: dir, SlotDir: sharedSlots(t), LogMaxSize: MinLogMaxSize, LogKeep: 2})
	if err != nil {
		t.Fatal(err)
	}
	write := func(id string, size int, age time.Duration) {
		if err := os.WriteFile(p.LogPath(id), []byte(strings.Repeat("x", size-1)+"\n"), 0o640); err != nil {
			t.Fatal(err)
		}
		at := time.Now().Add(-age)
		if err := os.Chtimes(p.LogPath(id), at, at); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.MkdirAll(p.instanceDir("live"), 0o750); err != nil {
		t.Fatal(err)
	}
	write("live", 3*MinLogMaxSize, 0)
	write("gone-new", 100, time.Minute)
	write("gone-mid", 100, time.Hour)
	write("gone-old", 100, 2*time.Hour)
	p.sweepLogs()
	if fi, err := os.Stat(p.LogPath("live")); err != nil || fi.Size() != 0 {
		t.Errorf("live log not truncated after rotation: %v %v", fi, err)
	}
	if fi, err := os.Stat(p.LogPath("live") + ".1"); err != nil || fi.Size() != MinLogMaxSize/2 {
		t.Errorf("rotated log: %v %v; want the last %d bytes", fi, err, MinLogMaxSize/2)
	}
	for id, kept := range map[string]bool{"gone-new": true, "gone-mid": true, "gone-old": false} {
		if _, err := os.Stat(p.LogPath(id)); (err == nil) != kept {
			t.Errorf("log of %s: kept %v, want %v (LogKeep 2, newest first)", id, err == nil, kept)
		}
	}
	if b, err := p.Logs(context.Background(), "live", 10); err != nil || len(b) != 10 {
		t.Errorf("Logs(live, 10): %q %v", b, err)
	}
}
