package local

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/immutd/immutd/internal/instance"
)

func TestNewLogOptions(t *testing.T) {
	dir := t.TempDir()
	p, _ := newProvider(t, dir)
	if p.logMaxSize != 16<<20 || p.LogPath("web-1") != filepath.Join(dir, "logs", "web-1.log") {
		t.Fatalf("defaults: max %d, path %s", p.logMaxSize, p.LogPath("web-1"))
	}
	for _, bad := range []int64{1000, MinLogMaxSize - 1, -1} {
		_, err := New(Options{Dir: dir, LogMaxSize: bad})
		want := fmt.Sprintf("local: log max size %d is below the minimum of 65536 bytes (64 KiB)", bad)
		if err == nil || err.Error() != want {
			t.Errorf("LogMaxSize %d: err = %v, want %q", bad, err, want)
		}
	}
	if _, err := New(Options{Dir: dir, LogMaxSize: MinLogMaxSize}); err != nil {
		t.Fatalf("minimum refused: %v", err)
	}
}

// TestLogDirOption: instance output goes to Options.LogDir, and both of
// an instance's logs go with it.
func TestLogDirOption(t *testing.T) {
	dir, logDir := t.TempDir(), filepath.Join(t.TempDir(), "instance-logs")
	p, _ := newProviderWith(t, Options{Dir: dir, LogDir: logDir})
	digest := importBundle(t, p, makeBundle(t, "1.0.0"))
	obs := launch(t, p, "web-1", digest)
	if p.LogPath("web-1") != filepath.Join(logDir, "web-1.log") {
		t.Fatalf("LogPath = %s", p.LogPath("web-1"))
	}
	waitFor(t, "instance log in LogDir", func() bool {
		b, _ := os.ReadFile(p.LogPath("web-1"))
		return strings.Contains(string(b), "listening on "+obs.Address)
	})
	if exists(filepath.Join(dir, "logs")) {
		t.Fatal("default log directory created")
	}
	if err := os.WriteFile(p.LogPath("web-1")+".1", []byte("older\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	if err := p.Terminate(t.Context(), "web-1", time.Minute); err != nil {
		t.Fatal(err)
	}
	if names := dirEntries(t, logDir); len(names) != 0 {
		t.Fatalf("logs left after terminate: %q", names)
	}
}

// rotation is what rotateHook reports.
type rotation struct{ seen, copied int64 }

// recordRotations collects the rotations of id's log.
func recordRotations(t *testing.T, id string) (get func() []rotation) {
	var mu sync.Mutex
	var rs []rotation
	setHook(t, &rotateHook, func(got string, seen, copied int64) {
		if got == id {
			mu.Lock()
			rs = append(rs, rotation{seen, copied})
			mu.Unlock()
		}
	})
	return func() []rotation {
		mu.Lock()
		defer mu.Unlock()
		return append([]rotation(nil), rs...)
	}
}

// runKeeper runs p.Run until the test ends and checks that it returns nil.
func runKeeper(t *testing.T, p *Provider) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(time.Minute):
			t.Error("Run did not return after its context ended")
		}
	})
}

// TestRunCapsLogOfFastWriter: an instance writes to its log as fast as
// it can while Run keeps the log within LogMaxSize, and the instance
// keeps running throughout.
//
// How far the log gets past LogMaxSize before a rotation is the write
// rate times the keeper's reaction time, a timing property (a benchmark
// would measure it). So the test asserts what holds at any speed,
// against what the keeper reports through rotateHook:
//
//   - every sample of <id>.log is at most the size the keeper saw at the
//     next rotation, i.e. everything written was seen and rotated;
//     samples are taken under the instance lock, which rotations hold
//     too, so no sample falls between a rotation's look and its truncate;
//   - every rotation happened above LogMaxSize and kept exactly
//     LogMaxSize/2 bytes, and <id>.log.1 is never larger than that;
//   - the rotated copy holds no NUL bytes: O_APPEND writes go on at the
//     new end after the truncate instead of leaving a hole.
func TestRunCapsLogOfFastWriter(t *testing.T) {
	const max = MinLogMaxSize
	p, _ := newProviderWith(t, Options{Dir: t.TempDir(), LogMaxSize: max})
	digest := importBundle(t, p, makeShellBundle(t))
	rotations := recordRotations(t, "spew-1")
	runKeeper(t, p)

	req := instance.LaunchRequest{InstanceID: "spew-1", Fleet: "web", ImageDigest: digest}
	req.Launch.Command = []string{os.Args[0]}
	req.Launch.Env = map[string]string{helperEnv: "spew"}
	obs, err := p.Launch(t.Context(), req)
	if err != nil {
		t.Fatal(err)
	}
	pid := pidOf(t, obs)
	killOnCleanup(t, pid)
	t.Cleanup(func() { _ = p.Terminate(context.Background(), "spew-1", 0) })

	type sample struct {
		log, rotated int64
		before       int // rotations so far: the next one is rotations()[before]
	}
	var samples []sample
	take := func() {
		lock, err := p.lockInstance(t.Context(), "spew-1")
		if err != nil {
			t.Fatal(err)
		}
		defer lock.unlock()
		s := sample{before: len(rotations())}
		if fi, err := os.Stat(p.LogPath("spew-1")); err == nil {
			s.log = fi.Size()
		}
		if fi, err := os.Stat(p.LogPath("spew-1") + rotatedSuffix); err == nil {
			s.rotated = fi.Size()
		}
		samples = append(samples, s)
	}
	waitFor(t, "10 rotations and 20 samples", func() bool {
		take()
		return len(rotations()) >= 10 && len(samples) >= 20
	})
	// One more rotation, so every sample has a next one to compare with.
	last := samples[len(samples)-1].before
	waitFor(t, "a rotation after the last sample", func() bool { return len(rotations()) > last })

	rs := rotations()
	for i, r := range rs {
		if r.seen <= max || r.copied != max/2 {
			t.Errorf("rotation %d: seen %d, copied %d; want seen > %d and copied %d", i, r.seen, r.copied, max, max/2)
		}
	}
	for i, s := range samples {
		if next := rs[s.before]; s.log > next.seen {
			t.Errorf("sample %d: log %d bytes, more than the %d the keeper saw at the next rotation", i, s.log, next.seen)
		}
		if s.rotated > max/2 {
			t.Errorf("sample %d: rotated log %d bytes, over %d", i, s.rotated, max/2)
		}
	}
	rotated, err := os.ReadFile(p.LogPath("spew-1") + rotatedSuffix)
	if err != nil || len(rotated) == 0 || bytes.IndexByte(rotated, 0) >= 0 {
		t.Fatalf("rotated log: %d bytes, NUL at %d, %v", len(rotated), bytes.IndexByte(rotated, 0), err)
	}
	if got := listByID(t, p)["spew-1"]; got.Phase != instance.Running || got.ProviderRef != obs.ProviderRef {
		t.Fatalf("writer after %d rotations: %+v", len(rs), got)
	}
	over := make([]int64, len(rs))
	for i, r := range rs {
		over[i] = r.seen - max
	}
	slices.Sort(over)
	t.Logf("%d rotations, %d samples; the keeper saw the log over the maximum by %d bytes (median), %d (max)",
		len(rs), len(samples), over[len(over)/2], over[len(over)-1])
}

// TestRunRotatesLogThatGrewWithoutAgent: a log that grew while no agent
// ran (no file event will come) is rotated by Run's sweep, keeping the
// exact last LogMaxSize/2 bytes.
func TestRunRotatesLogThatGrewWithoutAgent(t *testing.T) {
	const max = MinLogMaxSize
	p, _ := newProviderWith(t, Options{Dir: t.TempDir(), LogMaxSize: max})
	if err := p.writeMeta(&meta{ID: "old-1", Fleet: "web"}); err != nil {
		t.Fatal(err)
	}
	var content bytes.Buffer
	for i := 0; content.Len() < 3*max; i++ {
		fmt.Fprintf(&content, "line %06d\n", i)
	}
	if err := os.WriteFile(p.LogPath("old-1"), content.Bytes(), 0o640); err != nil {
		t.Fatal(err)
	}
	// A log without metadata is not an instance's; it is left alone.
	if err := os.WriteFile(p.LogPath("stray"), content.Bytes(), 0o640); err != nil {
		t.Fatal(err)
	}
	rotations := recordRotations(t, "old-1")
	runKeeper(t, p)
	waitFor(t, "rotation", func() bool { return len(rotations()) == 1 })

	if r := rotations()[0]; r.seen != int64(content.Len()) || r.copied != max/2 {
		t.Fatalf("rotation %+v, log had %d bytes", r, content.Len())
	}
	kept, err := os.ReadFile(p.LogPath("old-1") + rotatedSuffix)
	if err != nil || !bytes.Equal(kept, content.Bytes()[content.Len()-max/2:]) {
		t.Fatalf("rotated log is not the last %d bytes (%d bytes, %v)", max/2, len(kept), err)
	}
	if fi, err := os.Stat(p.LogPath("old-1")); err != nil || fi.Size() != 0 {
		t.Fatalf("log not truncated: %v, %v", fi, err)
	}
	if fi, err := os.Stat(p.LogPath("stray")); err != nil || fi.Size() != int64(content.Len()) || exists(p.LogPath("stray")+rotatedSuffix) {
		t.Fatalf("log without an instance was rotated: %v, %v", fi, err)
	}
}
