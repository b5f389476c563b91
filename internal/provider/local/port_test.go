package local

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/immutd/immutd/internal/instance"
)

// offerPorts makes p propose the given ports, in order and then again
// from the start, instead of asking the kernel.
func offerPorts(p *Provider, ports ...int) {
	var mu sync.Mutex
	next := 0
	p.candidatePort = func() (int, error) {
		mu.Lock()
		defer mu.Unlock()
		port := ports[next%len(ports)]
		next++
		return port, nil
	}
}

func portOf(t *testing.T, obs instance.Observed) int {
	t.Helper()
	_, s, err := net.SplitHostPort(obs.Address)
	if err != nil {
		t.Fatal(err)
	}
	port, err := strconv.Atoi(s)
	if err != nil {
		t.Fatal(err)
	}
	return port
}

func readOwner(t *testing.T, p *Provider, port int) string {
	t.Helper()
	owner, err := readPortOwner(p.portPath(port))
	if err != nil {
		t.Fatalf("reservation of port %d: %v", port, err)
	}
	return owner
}

// TestConcurrentLaunchesGetDistinctPorts: launches from two providers
// over one directory, all at once, never share a port. Both providers
// offer the same few candidates in the same order, so without the
// reservations nearly every launch would collide.
func TestConcurrentLaunchesGetDistinctPorts(t *testing.T) {
	const n = 40
	dir := t.TempDir()
	a, _ := newProvider(t, dir)
	b, _ := newProvider(t, dir)
	digest := importBundle(t, a, makeShellBundle(t))
	pool := make([]int, 50)
	for i := range pool {
		pool[i] = 31000 + i
	}
	offerPorts(a, pool...)
	offerPorts(b, pool...)

	results := make([]instance.Observed, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		p := a
		if i%2 == 1 {
			p = b
		}
		id := fmt.Sprintf("web-%02d", i)
		t.Cleanup(func() {
			if err := p.Terminate(context.Background(), id, 0); err != nil {
				t.Errorf("cleanup: %v", err)
			}
		})
		wg.Go(func() {
			results[i], errs[i] = p.Launch(t.Context(), instance.LaunchRequest{InstanceID: id, Fleet: "web", ImageDigest: digest})
			if pid, _ := strconv.Atoi(results[i].ProviderRef); pid > 0 {
				killOnCleanup(t, pid)
			}
		})
	}
	wg.Wait()
	owners := map[int]string{}
	for i, obs := range results {
		if errs[i] != nil {
			t.Fatalf("launch %d: %v", i, errs[i])
		}
		port := portOf(t, obs)
		if other, dup := owners[port]; dup {
			t.Errorf("%s and %s both got port %d", other, obs.ID, port)
		}
		owners[port] = obs.ID
		if got := readOwner(t, a, port); got != obs.ID {
			t.Errorf("port %d is reserved for %q, given to %s", port, got, obs.ID)
		}
	}

	// Terminating them all, from both providers at once, releases every
	// reservation and removes every lock file.
	for i, obs := range results {
		p := a
		if i%3 == 0 {
			p = b
		}
		wg.Go(func() {
			if err := p.Terminate(t.Context(), obs.ID, 0); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	for _, sub := range []string{"ports", "meta"} {
		if names := dirEntries(t, filepath.Join(dir, sub)); len(names) != 0 {
			t.Errorf("%s/ left after terminating everything: %q", sub, names)
		}
	}
	// The reapers take the locks once more after the terminates, and
	// remove the files again.
	waitFor(t, "no lock files", func() bool { return len(dirEntries(t, filepath.Join(dir, "locks"))) == 0 })
}

func TestTerminateReleasesPort(t *testing.T) {
	p, _ := newProvider(t, t.TempDir())
	digest := importBundle(t, p, makeShellBundle(t))
	obs := launch(t, p, "web-1", digest)
	port := portOf(t, obs)
	if got := readOwner(t, p, port); got != "web-1" {
		t.Fatalf("port %d reserved for %q", port, got)
	}
	if err := p.Terminate(t.Context(), "web-1", time.Second); err != nil {
		t.Fatal(err)
	}
	if exists(p.portPath(port)) {
		t.Fatalf("reservation of port %d left after terminate", port)
	}
}

// TestStalePortReservationIsReclaimed: a reservation whose owner has no
// metadata (or records another port) is taken over; one whose owner is
// alive, or being launched (its lock is busy), is not.
func TestStalePortReservationIsReclaimed(t *testing.T) {
	dir := t.TempDir()
	a, _ := newProvider(t, dir)
	b, logs := newProvider(t, dir)
	digest := importBundle(t, a, makeShellBundle(t))
	const live, launching, ghost, moved, movedTo = 32001, 32002, 32003, 32004, 32005

	offerPorts(a, live)
	launch(t, a, "live-1", digest)
	for port, owner := range map[int]string{launching: "busy-1", ghost: "ghost-1", moved: "moved-1"} {
		if err := createExclusive(a.portPath(port), []byte(owner+"\n")); err != nil {
			t.Fatal(err)
		}
	}
	// moved-1 exists but was launched again with another port since.
	if err := a.writeMeta(&meta{ID: "moved-1", Fleet: "web", ImageDigest: digest, Port: movedTo}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = a.Terminate(context.Background(), "moved-1", 0) })
	// busy-1 has no metadata yet, as during its launch, which holds its lock.
	held, err := b.lockInstance(t.Context(), "busy-1")
	if err != nil {
		t.Fatal(err)
	}
	defer held.unlock()

	offerPorts(b, live, launching, ghost, moved)
	first := launch(t, b, "web-1", digest)
	second := launch(t, b, "web-2", digest)
	if got := portOf(t, first); got != ghost {
		t.Fatalf("web-1 got port %d, want the stale %d", got, ghost)
	}
	if got := portOf(t, second); got != moved {
		t.Fatalf("web-2 got port %d, want the stale %d", got, moved)
	}
	for port, want := range map[int]string{live: "live-1", launching: "busy-1", ghost: "web-1", moved: "web-2"} {
		if got := readOwner(t, a, port); got != want {
			t.Errorf("port %d reserved for %q, want %q", port, got, want)
		}
	}
	for _, prev := range []string{"ghost-1", "moved-1"} {
		if !hasLog(logs, "stale port reservation taken over", "previous_owner", prev) {
			t.Errorf("takeover from %s not logged", prev)
		}
	}
	if exists(a.lockPath("ghost-1")) {
		t.Error("lock file of the stale owner left behind")
	}
}

// TestNewReservesRecordedPorts: an instance recorded before reservations
// existed gets one when a provider opens the directory.
func TestNewReservesRecordedPorts(t *testing.T) {
	dir := t.TempDir()
	p, _ := newProvider(t, dir)
	digest := importBundle(t, p, makeShellBundle(t))
	if err := p.writeMeta(&meta{ID: "old-1", Fleet: "web", ImageDigest: digest, Port: 32100, Address: "127.0.0.1:32100"}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Terminate(context.Background(), "old-1", 0) })
	if err := os.Remove(p.portPath(32100)); err == nil {
		t.Fatal("writeMeta made a reservation; the test needs a recorded instance without one")
	}

	q, _ := newProvider(t, dir)
	if got := readOwner(t, q, 32100); got != "old-1" {
		t.Fatalf("recorded port reserved for %q", got)
	}
	offerPorts(q, 32100, 32101)
	if got := portOf(t, launch(t, q, "web-1", digest)); got != 32101 {
		t.Fatalf("launch got port %d, want 32101 (32100 belongs to old-1)", got)
	}
}
