package local

import (
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/immutd/immutd/internal/instance"
)

// testRacyWindow replaces racyWindow in these tests: still far above the
// kernel's timestamp granularity (a clock tick), so no test depends on
// ctimes finer than the filesystem keeps them.
const testRacyWindow = 50 * time.Millisecond

// imageFiles is what the sample bundle has as files.
var imageFiles = []string{"bin/sampleapp", "config/app.conf", "manifest.json"}

// cachedFiles returns the paths the drift cache holds for id.
func cachedFiles(p *Provider, id string) map[string]fileStamp {
	p.drift.mu.Lock()
	ic := p.drift.byID[id]
	p.drift.mu.Unlock()
	if ic == nil {
		return nil
	}
	ic.mu.Lock()
	defer ic.mu.Unlock()
	out := map[string]fileStamp{}
	for rel, c := range ic.files {
		out[rel] = *c
	}
	return out
}

// inspectCounting inspects obs and returns the finding and the bytes it hashed.
func inspectCounting(tb testing.TB, p *Provider, obs instance.Observed) (*instance.Finding, int64) {
	tb.Helper()
	before := p.hashedBytes.Load()
	f, err := p.Inspect(tb.Context(), obs, nil)
	if err != nil {
		tb.Fatal(err)
	}
	return f, p.hashedBytes.Load() - before
}

// waitCached inspects obs until every file of the image is in the drift
// cache (their ctimes have left the racy window) and a clean inspection
// hashes nothing.
func waitCached(tb testing.TB, p *Provider, obs instance.Observed) {
	tb.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		f, n := inspectCounting(tb, p, obs)
		if f != nil {
			tb.Fatalf("unchanged instance drifted: %+v", f)
		}
		if n == 0 && len(cachedFiles(p, obs.ID)) == len(imageFiles) {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("drift cache never filled: %v", cachedFiles(p, obs.ID))
		}
		time.Sleep(10 * time.Millisecond) // poll interval of the wait for the condition above
	}
}

// newCachedInstance launches the sample app and waits until its files are cached.
func newCachedInstance(t *testing.T) (*Provider, instance.Observed) {
	t.Helper()
	p, _ := newProvider(t, t.TempDir())
	p.racyWindow = testRacyWindow
	digest := importBundle(t, p, makeBundle(t, "1.0.0"))
	obs := launch(t, p, "web-1", digest)
	waitCached(t, p, obs)
	return p, obs
}

func wantFinding(t *testing.T, f *instance.Finding, evidence ...string) {
	t.Helper()
	if len(evidence) == 0 {
		if f != nil {
			t.Fatalf("finding = %+v, want none", f)
		}
		return
	}
	if f == nil || f.Kind != instance.DriftMutated || !reflect.DeepEqual(f.Evidence, evidence) {
		t.Fatalf("finding = %+v, want %q", f, evidence)
	}
}

// TestDriftCacheSteadyStateHashesNothing: once cached, an unchanged
// instance costs no hashing, and the cache holds one entry per file of
// the image, nothing for what an instance adds.
func TestDriftCacheSteadyStateHashesNothing(t *testing.T) {
	p, obs := newCachedInstance(t)
	for range 3 {
		f, n := inspectCounting(t, p, obs)
		wantFinding(t, f)
		if n != 0 {
			t.Fatalf("steady inspection hashed %d bytes", n)
		}
	}
	got := cachedFiles(p, obs.ID)
	for _, rel := range imageFiles {
		if _, ok := got[rel]; !ok {
			t.Errorf("%s not cached: %v", rel, got)
		}
	}
	// An added file is reported without being read, and not cached.
	big := make([]byte, 1<<20)
	if err := os.WriteFile(filepath.Join(obs.Location, "added.bin"), big, 0o644); err != nil {
		t.Fatal(err)
	}
	f, n := inspectCounting(t, p, obs)
	wantFinding(t, f, "added added.bin")
	if n != 0 {
		t.Fatalf("inspection hashed %d bytes of an added file", n)
	}
	if got := cachedFiles(p, obs.ID); len(got) != len(imageFiles) {
		t.Fatalf("cache holds %d files, want %d", len(got), len(imageFiles))
	}
}

// TestDriftCacheSeesInPlaceEditWithRestoredMtime: an edit that keeps the
// size and puts the mtime back still changes the ctime, which no user
// space call can set, so the file is hashed again and found modified.
func TestDriftCacheSeesInPlaceEditWithRestoredMtime(t *testing.T) {
	p, obs := newCachedInstance(t)
	path := filepath.Join(obs.Location, "config/app.conf")
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	old, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	edited := []byte(fmt.Sprintf("%-*s\n", len(old)-1, `greeting = "pwned"`))
	if len(edited) != len(old) {
		t.Fatalf("edit changes the size: %d vs %d", len(edited), len(old))
	}
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(edited, 0); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(path, fi.ModTime(), fi.ModTime()); err != nil {
		t.Fatal(err)
	}
	now, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if now.Size() != fi.Size() || !now.ModTime().Equal(fi.ModTime()) {
		t.Fatalf("size or mtime not kept: %v %v -> %v %v", fi.Size(), fi.ModTime(), now.Size(), now.ModTime())
	}
	got, n := inspectCounting(t, p, obs)
	wantFinding(t, got, "modified config/app.conf")
	if n != int64(len(old)) {
		t.Fatalf("hashed %d bytes, want %d (the edited file only)", n, len(old))
	}
	// Putting the content back is clean again.
	if err := os.WriteFile(path, old, 0o644); err != nil {
		t.Fatal(err)
	}
	got, _ = inspectCounting(t, p, obs)
	wantFinding(t, got)
}

// TestDriftCacheSeesAppend: data appended to a cached file.
func TestDriftCacheSeesAppend(t *testing.T) {
	p, obs := newCachedInstance(t)
	f, err := os.OpenFile(filepath.Join(obs.Location, "manifest.json"), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write([]byte("payload")); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	got, _ := inspectCounting(t, p, obs)
	wantFinding(t, got, "modified manifest.json")
}

// TestDriftCacheSeesRenameOver: a file replaced by a rename has another
// inode; its content is hashed again, and a replacement with the same
// content is no drift.
func TestDriftCacheSeesRenameOver(t *testing.T) {
	p, obs := newCachedInstance(t)
	path := filepath.Join(obs.Location, "config/app.conf")
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	old, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	replace := func(content []byte) {
		t.Helper()
		tmp := filepath.Join(obs.Location, "config/.app.conf.new")
		if err := os.WriteFile(tmp, content, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(tmp, fi.ModTime(), fi.ModTime()); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, path); err != nil {
			t.Fatal(err)
		}
	}
	same := append([]byte(nil), old...)
	same[len(same)-2] ^= 1 // same size, one bit off
	replace(same)
	got, _ := inspectCounting(t, p, obs)
	wantFinding(t, got, "modified config/app.conf")

	replace(old)
	got, n := inspectCounting(t, p, obs)
	wantFinding(t, got)
	if n != int64(len(old)) {
		t.Fatalf("hashed %d bytes, want %d", n, len(old))
	}
}

// TestDriftCacheSeesChmod: a mode change shows, and a chmod there and
// back (content untouched, ctime changed) is no drift.
func TestDriftCacheSeesChmod(t *testing.T) {
	p, obs := newCachedInstance(t)
	path := filepath.Join(obs.Location, "config/app.conf")
	if err := os.Chmod(path, 0o600); err != nil {
		t.Fatal(err)
	}
	got, _ := inspectCounting(t, p, obs)
	wantFinding(t, got, "mode config/app.conf 0644->0600")
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	got, _ = inspectCounting(t, p, obs)
	wantFinding(t, got)
}

// TestDriftCacheBackstopRehashes: a change the stat cannot show (played
// here by rewriting the cache entry to the file's new stat) is found by
// the backstop, which re-hashes every file within DriftRehashInterval
// and none before half of it.
func TestDriftCacheBackstopRehashes(t *testing.T) {
	p, obs := newCachedInstance(t)
	var clock atomic.Int64
	clock.Store(time.Now().UnixNano())
	p.now = func() time.Time { return time.Unix(0, clock.Load()) }
	p.rehashAfter = time.Hour
	// Re-cache everything at the fake clock's start.
	p.drift.drop(obs.ID)
	waitCached(t, p, obs)

	path := filepath.Join(obs.Location, "config/app.conf")
	if err := os.WriteFile(path, []byte("greeting = \"sneaky\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	st := statOf(t, path)
	p.drift.mu.Lock()
	ic := p.drift.byID[obs.ID]
	p.drift.mu.Unlock()
	ic.mu.Lock()
	c := ic.files["config/app.conf"]
	sum, at := c.sum, c.hashedAt
	*c = st
	c.sum, c.hashedAt = sum, at
	ic.mu.Unlock()

	got, n := inspectCounting(t, p, obs)
	wantFinding(t, got) // the cache is trusted...
	if n != 0 {
		t.Fatalf("hashed %d bytes", n)
	}
	clock.Add(int64(30 * time.Minute))
	got, n = inspectCounting(t, p, obs)
	wantFinding(t, got) // ...for at least half the interval
	if n != 0 {
		t.Fatalf("hashed %d bytes at half the interval", n)
	}
	clock.Add(int64(30 * time.Minute))
	got, n = inspectCounting(t, p, obs)
	wantFinding(t, got, "modified config/app.conf")
	var total int64
	for _, rel := range imageFiles {
		fi, err := os.Stat(filepath.Join(obs.Location, rel))
		if err != nil {
			t.Fatal(err)
		}
		total += fi.Size()
	}
	if n != total {
		t.Fatalf("backstop hashed %d bytes, want all %d", n, total)
	}
}

func statOf(t *testing.T, path string) fileStamp {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		t.Fatal(err)
	}
	return stampOf(&st)
}

// TestDriftBackstopSpreads: each file's period lies in (interval/2,
// interval], and files are spread over it.
func TestDriftBackstopSpreads(t *testing.T) {
	const interval = time.Hour
	s := &inspectState{id: "web-1", rehashAfter: interval}
	c := &fileStamp{}
	dueAt := func(after time.Duration) int {
		s.now = int64(after)
		n := 0
		for i := range 1000 {
			if s.due(fmt.Sprintf("dir/file-%d", i), c) {
				n++
			}
		}
		return n
	}
	if n := dueAt(interval / 2); n != 0 {
		t.Errorf("%d files due at half the interval", n)
	}
	if n := dueAt(interval); n != 1000 {
		t.Errorf("%d of 1000 files due at the interval", n)
	}
	if n := dueAt(interval * 3 / 4); n < 400 || n > 600 {
		t.Errorf("%d of 1000 files due at 3/4 of the interval, want about half", n)
	}
	s.rehashAfter = -1
	if n := dueAt(10 * interval); n != 0 {
		t.Errorf("backstop off, yet %d files due", n)
	}
}

// TestDriftCacheDroppedWithInstance: Terminate drops the instance's
// cache, and so does List when another agent removed the instance.
func TestDriftCacheDroppedWithInstance(t *testing.T) {
	dir := t.TempDir()
	a, _ := newProvider(t, dir)
	b, _ := newProvider(t, dir)
	a.racyWindow = testRacyWindow
	digest := importBundle(t, a, makeBundle(t, "1.0.0"))
	one := launch(t, a, "web-1", digest)
	two := launch(t, a, "web-2", digest)
	waitCached(t, a, one)
	waitCached(t, a, two)
	if n, files := a.drift.len(); n != 2 || files != 2*len(imageFiles) {
		t.Fatalf("cache: %d instances, %d files", n, files)
	}
	if err := a.Terminate(t.Context(), "web-1", time.Second); err != nil {
		t.Fatal(err)
	}
	if n, _ := a.drift.len(); n != 1 || cachedFiles(a, "web-1") != nil {
		t.Fatalf("terminated instance still cached (%d instances)", n)
	}
	if err := b.Terminate(t.Context(), "web-2", time.Second); err != nil {
		t.Fatal(err)
	}
	listByID(t, a)
	if n, _ := a.drift.len(); n != 0 {
		t.Fatalf("instance removed by another agent still cached after List (%d instances)", n)
	}
}

// TestDriftCacheConcurrentInspections: inspections of several instances,
// and of one instance, at once (run with -race).
func TestDriftCacheConcurrentInspections(t *testing.T) {
	p, _ := newProvider(t, t.TempDir())
	p.racyWindow = testRacyWindow
	digest := importBundle(t, p, makeShellBundle(t))
	var all []instance.Observed
	for i := range 3 {
		all = append(all, launch(t, p, fmt.Sprintf("web-%d", i), digest))
	}
	if err := os.WriteFile(filepath.Join(all[0].Location, "bin/app"), []byte("#!/bin/sh\nexec sleep 301\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for range 4 {
		for i, obs := range all {
			wg.Go(func() {
				for range 20 {
					f, err := p.Inspect(t.Context(), obs, nil)
					if err != nil {
						t.Error(err)
						return
					}
					if (f != nil) != (i == 0) {
						t.Errorf("%s: finding %+v", obs.ID, f)
						return
					}
				}
			})
		}
	}
	wg.Wait()
}
