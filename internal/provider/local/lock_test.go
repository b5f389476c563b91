package local

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/immutd/immutd/internal/instance"
)

// TestReaperDoesNotRecreateTerminatedInstance replays a chaos-run
// failure: agent A launched an instance (so A's goroutine reaps it),
// agent B, leader by now, terminated it, and A's reaper then wrote the
// metadata back, so the instance was reported again, exited, and
// "terminated" a second time.
func TestReaperDoesNotRecreateTerminatedInstance(t *testing.T) {
	dir := t.TempDir()
	a, aLogs := newProvider(t, dir)
	b, _ := newProvider(t, dir)
	digest := importBundle(t, a, makeBundle(t, "1.0.0"))

	// Hold A's reaper back (after it waited for the process, before it
	// records the exit) until B's Terminate has returned.
	reached, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	t.Cleanup(func() { once.Do(func() { close(release) }) })
	setHook(t, &reapHook, func(id string) {
		if id != "web-1" {
			return
		}
		close(reached)
		<-release
	})
	obs := launch(t, a, "web-1", digest)
	httpGet(t, obs.Address, "/healthz")

	if err := b.Terminate(t.Context(), "web-1", time.Minute); err != nil {
		t.Fatal(err)
	}
	select {
	case <-reached:
	case <-time.After(time.Minute):
		t.Fatal("A's reaper never saw the process end")
	}
	once.Do(func() { close(release) })
	waitFor(t, "A's reaper to finish", func() bool {
		return hasLog(aLogs, "exit not recorded, instance removed", "instance_id", "web-1") ||
			hasLog(aLogs, "instance exited", "instance_id", "web-1")
	})

	if hasLog(aLogs, "instance exited", "instance_id", "web-1") || exists(a.metaPath("web-1")) {
		t.Fatal("A's reaper recorded an exit for an instance B had removed")
	}
	for name, p := range map[string]*Provider{"A": a, "B": b} {
		if got, ok := listByID(t, p)["web-1"]; ok {
			t.Errorf("List of %s still reports %+v", name, got)
		}
	}
	for _, sub := range []string{"meta", "ports", "instances", "logs"} {
		if names := dirEntries(t, filepath.Join(dir, sub)); len(names) != 0 {
			t.Errorf("%s/ left: %q", sub, names)
		}
	}
	// The reaper logs before it unlocks, and unlocking removes the file.
	waitFor(t, "no lock files", func() bool { return len(dirEntries(t, filepath.Join(dir, "locks"))) == 0 })
}

// TestInstanceLockSpansProviders: an operation of one provider waits
// for the lock another provider over the directory holds, and gives up
// when its context ends.
func TestInstanceLockSpansProviders(t *testing.T) {
	dir := t.TempDir()
	a, _ := newProvider(t, dir)
	b, _ := newProvider(t, dir)
	digest := importBundle(t, a, makeShellBundle(t))
	obs := launch(t, a, "web-1", digest)

	lock, err := a.lockInstance(t.Context(), "web-1")
	if err != nil {
		t.Fatal(err)
	}
	var unlockOnce sync.Once
	unlock := func() { unlockOnce.Do(lock.unlock) }
	t.Cleanup(unlock) // before the terminate launch registered runs
	// However long B waits, it cannot get the lock A holds.
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	if err := b.Terminate(ctx, "web-1", 0); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("terminate while another provider holds the lock: %v", err)
	}
	if _, err := b.tryLockInstance("web-1"); !errors.Is(err, errLockBusy) {
		t.Fatalf("tryLock of a held lock: %v", err)
	}
	if got := listByID(t, b)["web-1"]; got.Phase != instance.Running || got.ProviderRef != obs.ProviderRef {
		t.Fatalf("instance after the refused terminate: %+v", got)
	}

	done := make(chan error, 1)
	go func() { done <- b.Terminate(t.Context(), "web-1", 0) }()
	unlock()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(time.Minute):
		t.Fatal("terminate did not get the released lock")
	}
	if len(listByID(t, a)) != 0 {
		t.Fatal("instance listed after terminate")
	}
	// A's reaper takes the lock once more after the terminate.
	waitFor(t, "no lock file", func() bool { return !exists(a.lockPath("web-1")) })
}

// TestLockWaiterNoticesRemovedLockFile: the holder removes the lock file
// of an instance that is gone; a waiter that was blocked on that file
// must lock the file now at the path, not the removed one.
func TestLockWaiterNoticesRemovedLockFile(t *testing.T) {
	dir := t.TempDir()
	a, _ := newProvider(t, dir)
	b, _ := newProvider(t, dir)
	held, err := a.lockInstance(t.Context(), "x-1")
	if err != nil {
		t.Fatal(err)
	}
	path := a.lockPath("x-1")
	got := make(chan *instanceLock, 1)
	go func() {
		l, err := b.lockInstance(context.Background(), "x-1")
		if err != nil {
			t.Error(err)
		}
		got <- l
	}()
	// Wait until the waiter has the old file open (the test process then
	// has two descriptors on it), so it is blocked on that very file.
	waitFor(t, "the waiter to open the lock file", func() bool { return openCount(t, path) == 2 })
	held.unlock() // x-1 has no metadata: the file is removed
	var l *instanceLock
	select {
	case l = <-got:
	case <-time.After(time.Minute):
		t.Fatal("waiter never got the lock")
	}
	if l == nil {
		t.FailNow()
	}
	defer l.unlock()
	if same, err := isAtPath(l.f, path); err != nil || !same {
		t.Fatalf("waiter holds a lock on a removed file (same %v, %v)", same, err)
	}
	if _, err := a.tryLockInstance("x-1"); !errors.Is(err, errLockBusy) {
		t.Fatalf("another provider could lock x-1 while the waiter holds it: %v", err)
	}
}

// openCount counts this process's descriptors open on the file at path.
func openCount(t *testing.T, path string) int {
	t.Helper()
	want, err := os.Stat(path)
	if err != nil {
		return 0
	}
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, fd := range fds {
		if fi, err := os.Stat(fmt.Sprintf("/proc/self/fd/%s", fd.Name())); err == nil && os.SameFile(fi, want) {
			n++
		}
	}
	return n
}

func TestLockHonoursContext(t *testing.T) {
	p, _ := newProvider(t, t.TempDir())
	held, err := p.lockInstance(t.Context(), "x-1")
	if err != nil {
		t.Fatal(err)
	}
	defer held.unlock()
	// The in-process wait, and the flock polling of a second provider,
	// both end with the context: the lock is never free meanwhile.
	other, _ := newProvider(t, p.Dir())
	for name, q := range map[string]*Provider{"same provider": p, "other provider": other} {
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Millisecond)
		_, err := q.lockInstance(ctx, "x-1")
		cancel()
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("%s: lock held elsewhere: %v, want the context's error", name, err)
		}
	}
}
