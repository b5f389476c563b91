package config

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// wait bounds every wait for the watcher; nothing in these tests sleeps.
const wait = 5 * time.Second

type watchHarness struct {
	t       *testing.T
	w       *Watcher
	dir     string
	reloads chan bool // one value per read of the directory: whether it published
	done    chan error
}

func startWatcher(t *testing.T, dir string, opts WatchOptions) *watchHarness {
	t.Helper()
	if opts.Rescan == 0 {
		opts.Rescan = time.Hour // only events drive these tests unless they say otherwise
	}
	h := &watchHarness{t: t, w: NewWatcher(dir, opts), dir: dir, reloads: make(chan bool, 1000), done: make(chan error, 1)}
	h.w.afterReload = func(published bool) {
		select {
		case h.reloads <- published:
		default:
			t.Error("reload hook buffer full")
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	go func() { h.done <- h.w.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-h.done:
			if err != nil {
				t.Errorf("Run returned %v", err)
			}
		case <-time.After(wait):
			t.Error("Run did not return after cancel")
		}
	})
	return h
}

// next returns the next update.
func (h *watchHarness) next() Update {
	h.t.Helper()
	select {
	case u := <-h.w.Updates():
		return u
	case <-time.After(wait):
		h.t.Fatal("no update")
	}
	return Update{}
}

// until returns the first update that satisfies ok, skipping intermediate
// states a multi-step file operation may expose.
func (h *watchHarness) until(what string, ok func(Update) bool) Update {
	h.t.Helper()
	deadline := time.After(wait)
	for {
		select {
		case u := <-h.w.Updates():
			if ok(u) {
				return u
			}
		case <-deadline:
			h.t.Fatalf("no update with %s", what)
		}
	}
}

// reloaded waits for the next read of the directory and says whether it published.
func (h *watchHarness) reloaded() bool {
	h.t.Helper()
	select {
	case p := <-h.reloads:
		return p
	case <-time.After(wait):
		h.t.Fatal("the directory was not read again")
	}
	return false
}

func sizes(u Update) map[string]int {
	if u.Set == nil {
		return nil
	}
	out := map[string]int{}
	for _, f := range u.Set.Fleets {
		out[f.Name] = f.Size
	}
	return out
}

func hasSizes(want map[string]int) func(Update) bool {
	return func(u Update) bool { return u.Err == nil && reflect.DeepEqual(sizes(u), want) }
}

func fleetOfSize(name string, size int) string {
	return strings.Replace(fleetSrc(name), "size     = 1", "size     = "+strconv.Itoa(size), 1)
}

func TestWatcherInitialUpdate(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "web.hcl"), fleetOfSize("web", 2))
	at := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	h := startWatcher(t, dir, WatchOptions{Now: func() time.Time { return at }})
	u := h.next()
	if u.Err != nil {
		t.Fatalf("initial update failed: %v", u.Err)
	}
	if got := sizes(u); !reflect.DeepEqual(got, map[string]int{"web": 2}) {
		t.Errorf("fleets %v", got)
	}
	files, err := ReadFleetDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if u.Hash == "" || u.Hash != HashFleetFiles(files) {
		t.Errorf("hash %q, want the hash of the files", u.Hash)
	}
	if !u.At.Equal(at) {
		t.Errorf("At %v, want %v", u.At, at)
	}
}

func TestWatcherInitialUpdateOfEmptyAndMissingDir(t *testing.T) {
	h := startWatcher(t, t.TempDir(), WatchOptions{})
	if u := h.next(); u.Err != nil || u.Set == nil || len(u.Set.Fleets) != 0 || u.Hash == "" {
		t.Errorf("empty directory: %+v", u)
	}
	h2 := startWatcher(t, filepath.Join(t.TempDir(), "absent"), WatchOptions{})
	if u := h2.next(); !errors.Is(u.Err, fs.ErrNotExist) || u.Set != nil || u.Hash != "" {
		t.Errorf("missing directory: %+v", u)
	}
}

func TestWatcherEdits(t *testing.T) {
	dir := t.TempDir()
	web := filepath.Join(dir, "web.hcl")
	writeFile(t, web, fleetOfSize("web", 1))
	writeFile(t, filepath.Join(dir, "api.hcl"), fleetOfSize("api", 1))
	h := startWatcher(t, dir, WatchOptions{})
	first := h.next()
	if !hasSizes(map[string]int{"web": 1, "api": 1})(first) {
		t.Fatalf("initial update %+v %v", sizes(first), first.Err)
	}

	t.Run("write in place", func(t *testing.T) {
		h.t = t
		writeFile(t, web, fleetOfSize("web", 2))
		u := h.until("web size 2", hasSizes(map[string]int{"web": 2, "api": 1}))
		if u.Hash == first.Hash {
			t.Error("hash did not change")
		}
	})
	t.Run("temp file renamed over", func(t *testing.T) {
		h.t = t
		tmp := filepath.Join(dir, ".web.hcl.tmp")
		writeFile(t, tmp, fleetOfSize("web", 3))
		if err := os.Rename(tmp, web); err != nil {
			t.Fatal(err)
		}
		h.until("web size 3", hasSizes(map[string]int{"web": 3, "api": 1}))
	})
	t.Run("vim: original renamed to backup, new file written", func(t *testing.T) {
		h.t = t
		if err := os.Rename(web, web+"~"); err != nil {
			t.Fatal(err)
		}
		writeFile(t, web, fleetOfSize("web", 4))
		if err := os.Remove(web + "~"); err != nil {
			t.Fatal(err)
		}
		h.until("web size 4", hasSizes(map[string]int{"web": 4, "api": 1}))
	})
	t.Run("delete and create", func(t *testing.T) {
		h.t = t
		if err := os.Remove(web); err != nil {
			t.Fatal(err)
		}
		writeFile(t, web, fleetOfSize("web", 5))
		h.until("web size 5", hasSizes(map[string]int{"web": 5, "api": 1}))
	})
	t.Run("invalid edit then fix", func(t *testing.T) {
		h.t = t
		writeFile(t, web, strings.Replace(fleetOfSize("web", 6), `"docker"`, `"kvm"`, 1))
		bad := h.until("an error", func(u Update) bool { return u.Err != nil })
		var diags Diagnostics
		if !errors.As(bad.Err, &diags) || bad.Set != nil || bad.Hash == "" {
			t.Fatalf("invalid edit gave %+v", bad)
		}
		if !strings.Contains(bad.Err.Error(), `web.hcl:3:14: fleet "web".provider: must be "local", "docker" or "qemu", got "kvm"`) {
			t.Errorf("error does not point at the mistake: %v", bad.Err)
		}
		writeFile(t, web, fleetOfSize("web", 6))
		h.until("web size 6", hasSizes(map[string]int{"web": 6, "api": 1}))
	})
	t.Run("delete a file", func(t *testing.T) {
		h.t = t
		if err := os.Remove(web); err != nil {
			t.Fatal(err)
		}
		h.until("only api", hasSizes(map[string]int{"api": 1}))
	})
}

func TestWatcherTouchPublishesNothing(t *testing.T) {
	dir := t.TempDir()
	api := filepath.Join(dir, "api.hcl")
	writeFile(t, api, fleetOfSize("api", 1))
	h := startWatcher(t, dir, WatchOptions{})
	h.next()
	if !h.reloaded() {
		t.Fatal("initial read did not publish")
	}
	// Nothing changed the directory since the watch began, so the next read
	// is the one the touch causes.
	now := time.Now().Add(time.Minute)
	if err := os.Chtimes(api, now, now); err != nil {
		t.Fatal(err)
	}
	if h.reloaded() {
		t.Error("a touch that left the content alone published an update")
	}
	if n := len(h.w.Updates()); n != 0 {
		t.Errorf("%d updates pending after a touch", n)
	}
}

func TestWatcherDirectoryRemovedAndRecreated(t *testing.T) {
	parent := t.TempDir()
	dir := filepath.Join(parent, "fleets.d")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, "web.hcl"), fleetOfSize("web", 1))
	core, logs := observer.New(zap.DebugLevel)
	h := startWatcher(t, dir, WatchOptions{Logger: zap.New(core)})
	h.until("web", hasSizes(map[string]int{"web": 1}))

	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	gone := h.until("a missing directory", func(u Update) bool { return u.Err != nil })
	if !errors.Is(gone.Err, fs.ErrNotExist) || gone.Hash != "" {
		t.Errorf("removed directory gave %+v", gone)
	}

	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, "api.hcl"), fleetOfSize("api", 2))
	h.until("api in the new directory", hasSizes(map[string]int{"api": 2}))
	if logs.FilterMessage("fleets_watch_lost").Len() == 0 {
		t.Error("losing the watch was not logged")
	}

	// The new directory is watched: a later edit is seen too.
	writeFile(t, filepath.Join(dir, "api.hcl"), fleetOfSize("api", 3))
	h.until("api size 3", hasSizes(map[string]int{"api": 3}))
}

func TestWatcherDirectoryReplacedByRename(t *testing.T) {
	parent := t.TempDir()
	dir := filepath.Join(parent, "fleets.d")
	next := filepath.Join(parent, "fleets.d.next")
	for _, d := range []string{dir, next} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	writeFile(t, filepath.Join(dir, "web.hcl"), fleetOfSize("web", 1))
	writeFile(t, filepath.Join(next, "web.hcl"), fleetOfSize("web", 7))
	h := startWatcher(t, dir, WatchOptions{})
	h.until("web", hasSizes(map[string]int{"web": 1}))

	// Swap the directory for another one, as a deploy tool might.
	if err := os.Rename(dir, filepath.Join(parent, "fleets.d.old")); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(next, dir); err != nil {
		t.Fatal(err)
	}
	h.until("the new directory's web", hasSizes(map[string]int{"web": 7}))

	// Edits in the old directory no longer count; edits in the new one do.
	writeFile(t, filepath.Join(parent, "fleets.d.old", "old.hcl"), fleetOfSize("old", 1))
	writeFile(t, filepath.Join(dir, "web.hcl"), fleetOfSize("web", 8))
	h.until("web size 8", hasSizes(map[string]int{"web": 8}))
}

func TestWatcherRescanSeesOutsideChanges(t *testing.T) {
	// A local image directory is outside the watched directory: only the
	// periodic rescan notices it appear.
	root := t.TempDir()
	dir := filepath.Join(root, "fleets.d")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	src := strings.NewReplacer(`"docker"`, `"local"`, `"nginx:1.27"`, `"../images/app"`).Replace(fleetSrc("web"))
	writeFile(t, filepath.Join(dir, "web.hcl"), src)
	h := startWatcher(t, dir, WatchOptions{Rescan: 20 * time.Millisecond})
	bad := h.next()
	if bad.Err == nil {
		t.Fatal("fleet with a missing image loaded")
	}
	image := filepath.Join(root, "images", "app")
	if err := os.MkdirAll(image, 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(image, "manifest.json"), "{}")
	good := h.until("the image found", func(u Update) bool { return u.Err == nil })
	if good.Hash != bad.Hash {
		t.Errorf("hash changed without a change of the fleet files")
	}
	if good.Set.Fleet("web").Image != image {
		t.Errorf("image %q, want %q", good.Set.Fleet("web").Image, image)
	}
}

// writeAtomic replaces a file in one step, as careful editors do.
func writeAtomic(t *testing.T, path, content string) {
	t.Helper()
	tmp := filepath.Join(filepath.Dir(path), ".tmp-"+filepath.Base(path))
	writeFile(t, tmp, content)
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func TestWatcherKeepsOnlyTheLatestUpdate(t *testing.T) {
	dir := t.TempDir()
	web := filepath.Join(dir, "web.hcl")
	writeFile(t, web, fleetOfSize("web", 1))
	h := startWatcher(t, dir, WatchOptions{})
	if !h.reloaded() {
		t.Fatal("initial read did not publish")
	}
	// Nobody reads the updates while the directory changes three times.
	for size := 2; size <= 4; size++ {
		writeAtomic(t, web, fleetOfSize("web", size))
		if !h.reloaded() {
			t.Fatalf("change to size %d published nothing", size)
		}
		if n := len(h.w.Updates()); n != 1 {
			t.Fatalf("%d updates buffered, want 1", n)
		}
	}
	u := h.next()
	if !hasSizes(map[string]int{"web": 4})(u) {
		t.Errorf("pending update has %v, want the latest (web: 4)", sizes(u))
	}
	if n := len(h.w.Updates()); n != 0 {
		t.Errorf("%d more updates pending", n)
	}
}

func TestWatcherStopsCleanly(t *testing.T) {
	before := runtime.NumGoroutine()
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "web.hcl"), fleetOfSize("web", 1))
	w := NewWatcher(dir, WatchOptions{})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	select {
	case <-w.Updates():
	case <-time.After(wait):
		t.Fatal("no initial update")
	}
	if err := w.Run(ctx); err == nil {
		t.Error("second Run succeeded")
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run returned %v", err)
		}
	case <-time.After(wait):
		t.Fatal("Run did not return after cancel")
	}
	deadline := time.Now().Add(wait)
	for runtime.NumGoroutine() > before {
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines left running, had %d", runtime.NumGoroutine(), before)
		}
		runtime.Gosched()
	}
}
