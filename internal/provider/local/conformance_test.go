package local

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/immutd/immutd/internal/instance"
	"github.com/immutd/immutd/internal/provider/conformance"
)

// localKnownFailures lists the conformance behaviours the local provider
// is known to fail, each with the evidence. Keep it empty unless a
// behaviour fails and the provider's fix is someone else's change; every
// entry is skipped with its reason, never silently.
var localKnownFailures = map[string]string{}

// TestConformance runs the provider conformance suite against real
// processes: every behaviour gets a provider directory of its own (in
// the test's temp dir) with the sample app imported, and reopening the
// directory with a new Provider is an agent restart.
func TestConformance(t *testing.T) {
	healthyBundle := makeBundle(t, "conformance")
	// A bundle whose process exits at once: sampleapp refuses the flag
	// and exits with status 2.
	crashingBundle := makeBundle(t, "conformance-crash")
	writeTree(t, crashingBundle, map[string]string{
		"manifest.json": `{"name": "sampleapp", "version": "crash", "entrypoint": ["bin/sampleapp", "-no-such-flag"]}`,
	})
	// The digests are of the content; any directory gets the same.
	importer := conformanceOpen(t, conformanceDir(t))
	healthy := importBundle(t, importer, healthyBundle)
	crashing := importBundle(t, importer, crashingBundle)

	conformance.Run(t, conformance.Harness{
		Name: "local",
		NewState: func(t *testing.T) string {
			dir := conformanceDir(t)
			p := conformanceOpen(t, dir)
			for want, bundle := range map[string]string{healthy: healthyBundle, crashing: crashingBundle} {
				if got := importBundle(t, p, bundle); got != want {
					t.Fatalf("import %s: digest %s, want %s", bundle, got, want)
				}
			}
			return dir
		},
		Open: func(t *testing.T, dir string) conformance.Provider {
			return conformanceOpen(t, dir)
		},
		Healthy:  healthy,
		Crashing: crashing,
		Missing:  "sha256:" + strings.Repeat("0", 64),
		Template: instance.Launch{Env: map[string]string{"APP_MODE": "conformance"}},
		Mutate: func(t *testing.T, dir string, obs instance.Observed, name string) string {
			root := filepath.Join(dir, "instances", obs.ID)
			if obs.Location != root {
				t.Fatalf("instance %s is at %q, want its root %q", obs.ID, obs.Location, root)
			}
			if err := os.WriteFile(filepath.Join(root, name), []byte("changed in place\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			return name
		},
		Kill: func(t *testing.T, dir string, obs instance.Observed) {
			pids := conformanceProcs(t, dir, obs.ID)
			if len(pids) == 0 {
				t.Fatalf("no live process of %s to kill", obs.ID)
			}
			for _, pid := range pids {
				if err := unix.Kill(pid, unix.SIGKILL); err != nil {
					t.Fatalf("kill %d: %v", pid, err)
				}
			}
		},
		Live: func(t *testing.T, dir, id string) int { return len(conformanceProcs(t, dir, id)) },
		Leftovers: func(t *testing.T, dir, id string) []string {
			var left []string
			for _, pid := range conformanceProcs(t, dir, id) {
				left = append(left, fmt.Sprintf("live process %d", pid))
			}
			for _, rel := range []string{"meta/" + id + ".json", "instances/" + id, "tmp/" + id,
				"logs/" + id + ".log", "logs/" + id + ".log.1", "locks/" + id + ".lock"} {
				if _, err := os.Lstat(filepath.Join(dir, rel)); err == nil {
					left = append(left, rel)
				} else if !errors.Is(err, fs.ErrNotExist) {
					t.Fatal(err)
				}
			}
			ports, err := os.ReadDir(filepath.Join(dir, "ports"))
			if err != nil {
				t.Fatal(err)
			}
			for _, de := range ports {
				if b, err := os.ReadFile(filepath.Join(dir, "ports", de.Name())); err == nil && strings.TrimSpace(string(b)) == id {
					left = append(left, "port reservation ports/"+de.Name())
				}
			}
			return left
		},
		// The directory goes with the test's temp dir; only processes
		// would outlive it.
		Remove: func(t *testing.T, dir, id string) {
			for _, pid := range conformanceProcs(t, dir, id) {
				_ = unix.Kill(-pid, unix.SIGKILL)
				_ = unix.Kill(pid, unix.SIGKILL)
			}
		},
		KnownFailures: localKnownFailures,
	})
}

// conformanceDir is a fresh provider directory, with symlinks resolved so
// that it compares equal to the working directories /proc reports.
func conformanceDir(t *testing.T) string {
	t.Helper()
	dir, err := filepath.EvalSymlinks(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

// conformanceOpen opens a provider over dir. It logs nothing: its reapers
// may outlive the test that opened it.
func conformanceOpen(t *testing.T, dir string) *Provider {
	t.Helper()
	p, err := New(Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// conformanceProcs returns the live processes whose working directory is
// the root of instance id in dir, read from /proc without the provider.
func conformanceProcs(t *testing.T, dir, id string) []int {
	t.Helper()
	root := filepath.Join(dir, "instances", id)
	names, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	for _, de := range names {
		pid, err := strconv.Atoi(de.Name())
		if err != nil {
			continue
		}
		if cwd, err := os.Readlink(fmt.Sprintf("/proc/%d/cwd", pid)); err != nil || cwd != root {
			continue
		}
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue // gone meanwhile
		}
		// The state is the first field after the command name in parentheses.
		if i := bytes.LastIndexByte(stat, ')'); i >= 0 && i+2 < len(stat) && bytes.IndexByte([]byte("ZXx"), stat[i+2]) < 0 {
			pids = append(pids, pid)
		}
	}
	return pids
}
