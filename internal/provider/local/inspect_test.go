package local

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/immutd/immutd/internal/instance"
)

// TestInspectDoesNotFollowReplacedRoot: an instance root replaced by a
// symlink (or a file) is reported as such, its target is not walked,
// and Terminate removes the link, not the target.
func TestInspectDoesNotFollowReplacedRoot(t *testing.T) {
	cases := []struct {
		name    string
		replace func(t *testing.T, root, target string)
		want    string
	}{
		{"symlink", func(t *testing.T, root, target string) {
			if err := os.Symlink(target, root); err != nil {
				t.Fatal(err)
			}
		}, "type . dir->symlink"},
		{"file", func(t *testing.T, root, _ string) {
			if err := os.WriteFile(root, []byte("not a root"), 0o644); err != nil {
				t.Fatal(err)
			}
		}, "type . dir->file"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p, _ := newProvider(t, t.TempDir())
			digest := importBundle(t, p, makeShellBundle(t))
			obs := launch(t, p, "web-1", digest)
			// A target that looks like a drifted instance, so walking it
			// would show in the evidence.
			target := t.TempDir()
			writeTree(t, target, map[string]string{"canary": "do not touch", "bin/app": "x"})
			if err := os.Rename(obs.Location, filepath.Join(t.TempDir(), "moved")); err != nil {
				t.Fatal(err)
			}
			tc.replace(t, obs.Location, target)

			f, err := p.Inspect(t.Context(), obs, nil)
			if err != nil {
				t.Fatal(err)
			}
			if f == nil || f.Kind != instance.DriftMutated || !reflect.DeepEqual(f.Evidence, []string{tc.want}) {
				t.Fatalf("finding = %+v, want %q", f, tc.want)
			}
			if err := p.Terminate(t.Context(), "web-1", time.Second); err != nil {
				t.Fatal(err)
			}
			if exists(obs.Location) {
				t.Fatal("replaced root left behind")
			}
			if b, err := os.ReadFile(filepath.Join(target, "canary")); err != nil || string(b) != "do not touch" {
				t.Fatalf("target of the link changed: %q, %v", b, err)
			}
		})
	}
}

// TestInspectOfGoneInstanceIsNotFound: whatever the way the metadata
// went, Inspect's error wraps ErrNotFound and instance.ErrGone, which
// the leader reads as "gone", not as a failure.
func TestInspectOfGoneInstanceIsNotFound(t *testing.T) {
	dir := t.TempDir()
	a, _ := newProvider(t, dir)
	b, _ := newProvider(t, dir)
	digest := importBundle(t, a, makeShellBundle(t))
	check := func(what string, err error, id string) {
		t.Helper()
		if !errors.Is(err, ErrNotFound) || !errors.Is(err, instance.ErrGone) || !strings.HasPrefix(err.Error(), "local: inspect "+id+": ") {
			t.Errorf("%s: err = %v, want one wrapping ErrNotFound and instance.ErrGone", what, err)
		}
	}

	_, err := a.Inspect(t.Context(), instance.Observed{ID: "never-was", ImageDigest: digest}, nil)
	check("never launched", err, "never-was")

	obs := launch(t, a, "web-1", digest)
	if err := b.Terminate(t.Context(), "web-1", time.Second); err != nil {
		t.Fatal(err)
	}
	_, err = a.Inspect(t.Context(), obs, nil)
	check("terminated by another agent", err, "web-1")

	// Terminated while Inspect walks the root.
	obs = launch(t, a, "web-2", digest)
	setHook(t, &inspectHook, func(id string) {
		if err := b.Terminate(t.Context(), id, time.Second); err != nil {
			t.Error(err)
		}
	})
	_, err = a.Inspect(t.Context(), obs, nil)
	check("terminated during the walk", err, "web-2")
}
