package local

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/immutd/immutd/internal/provider/hostdir"
)

// writeTree creates files (path -> content) below dir; a content of
// "dir:" makes an empty directory and "link:target" a symlink.
func writeTree(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	for p, content := range files {
		full := filepath.Join(dir, filepath.FromSlash(p))
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		switch {
		case content == "dir:":
			if err := os.MkdirAll(full, 0o755); err != nil {
				t.Fatal(err)
			}
		case strings.HasPrefix(content, "link:"):
			if err := os.Symlink(strings.TrimPrefix(content, "link:"), full); err != nil {
				t.Fatal(err)
			}
		default:
			if err := os.WriteFile(full, []byte(content), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
}

func digestOf(t *testing.T, dir string) string {
	t.Helper()
	es, err := walkTree(context.Background(), dir, walkOptions{strict: true})
	if err != nil {
		t.Fatal(err)
	}
	return treeDigest(es)
}

func TestDigestDeterministic(t *testing.T) {
	files := map[string]string{
		"a.txt":      "a",
		"a/b.txt":    "b",
		"z/y/x":      "x",
		"empty":      "dir:",
		"link":       "link:a.txt",
		"z/back":     "link:../a/b.txt",
		"with space": "s",
	}
	d1, d2 := t.TempDir(), t.TempDir()
	writeTree(t, d1, files)
	writeTree(t, d2, files)
	// Same content, created in another order and with another root mode.
	if err := os.Chmod(d2, 0o700); err != nil {
		t.Fatal(err)
	}
	g1, g2 := digestOf(t, d1), digestOf(t, d2)
	if g1 != g2 {
		t.Fatalf("digests differ for identical trees: %s vs %s", g1, g2)
	}
	if g1 != digestOf(t, d1) {
		t.Fatal("digest of the same tree changed between runs")
	}
	if _, err := parseDigest(g1); err != nil {
		t.Fatal(err)
	}
}

func TestDigestSensitivity(t *testing.T) {
	base := map[string]string{"bin/app": "binary", "config/app.conf": "x = 1", "link": "link:config/app.conf"}
	ref := t.TempDir()
	writeTree(t, ref, base)
	want := digestOf(t, ref)

	cases := map[string]func(t *testing.T, dir string){
		"content": func(t *testing.T, dir string) {
			writeTree(t, dir, map[string]string{"config/app.conf": "x = 2"})
		},
		"mode": func(t *testing.T, dir string) {
			if err := os.Chmod(filepath.Join(dir, "bin/app"), 0o755); err != nil {
				t.Fatal(err)
			}
		},
		"added file": func(t *testing.T, dir string) {
			writeTree(t, dir, map[string]string{"extra": ""})
		},
		"added empty dir": func(t *testing.T, dir string) {
			writeTree(t, dir, map[string]string{"empty": "dir:"})
		},
		"removed file": func(t *testing.T, dir string) {
			if err := os.Remove(filepath.Join(dir, "bin/app")); err != nil {
				t.Fatal(err)
			}
		},
		"symlink target": func(t *testing.T, dir string) {
			if err := os.Remove(filepath.Join(dir, "link")); err != nil {
				t.Fatal(err)
			}
			writeTree(t, dir, map[string]string{"link": "link:bin/app"})
		},
		"symlink replaced by file": func(t *testing.T, dir string) {
			if err := os.Remove(filepath.Join(dir, "link")); err != nil {
				t.Fatal(err)
			}
			writeTree(t, dir, map[string]string{"link": "x = 1"})
		},
		"renamed": func(t *testing.T, dir string) {
			if err := os.Rename(filepath.Join(dir, "bin/app"), filepath.Join(dir, "bin/app2")); err != nil {
				t.Fatal(err)
			}
		},
	}
	for name, mutate := range cases {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			writeTree(t, dir, base)
			if got := digestOf(t, dir); got != want {
				t.Fatalf("fresh copy has digest %s, want %s", got, want)
			}
			mutate(t, dir)
			if got := digestOf(t, dir); got == want {
				t.Fatalf("digest unchanged after %s", name)
			}
		})
	}
}

func TestCopyTreePreservesModesAndHashesCopy(t *testing.T) {
	src := t.TempDir()
	writeTree(t, src, map[string]string{"bin/app": "#!/bin/sh\n", "ro/file": "r", "link": "link:bin/app"})
	if err := os.Chmod(filepath.Join(src, "bin/app"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Join(src, "ro"), 0o555); err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(t.TempDir(), "copy")
	t.Cleanup(func() { _ = hostdir.RemoveTree(dst) })
	entries, err := copyTree(context.Background(), src, dst, walkOptions{fsync: true})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := treeDigest(entries), digestOf(t, src); got != want {
		t.Fatalf("copy reports %s, source is %s", got, want)
	}
	if got := digestOf(t, dst); got != digestOf(t, src) {
		t.Fatalf("copied tree has digest %s, source %s", got, digestOf(t, src))
	}
	fi, err := os.Stat(filepath.Join(dst, "ro"))
	if err != nil || fi.Mode().Perm() != 0o555 {
		t.Fatalf("ro dir mode = %v, %v", fi.Mode(), err)
	}
}

func TestWalkRejectsSpecialFilesOnlyWhenStrict(t *testing.T) {
	dir := t.TempDir()
	if err := unix.Mkfifo(filepath.Join(dir, "pipe"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := walkTree(context.Background(), dir, walkOptions{strict: true}); err == nil || !strings.Contains(err.Error(), "pipe: fifo files are not allowed") {
		t.Fatalf("strict walk: err = %v", err)
	}
	es, err := walkTree(context.Background(), dir, walkOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(es) != 1 || es[0].Type != typeFIFO {
		t.Fatalf("lenient walk = %+v", es)
	}
}

func TestCheckSymlinks(t *testing.T) {
	cases := []struct {
		name  string
		files map[string]string
		bad   string // substring of the error, "" for ok
	}{
		{"relative inside", map[string]string{"a/f": "", "a/l": "link:f", "b": "link:a/../a/f"}, ""},
		{"dangling inside", map[string]string{"l": "link:missing/file"}, ""},
		{"dir link then down", map[string]string{"d/f": "", "e": "link:d", "g": "link:e/f"}, ""},
		{"absolute", map[string]string{"l": "link:/etc/passwd"}, "symlink l -> /etc/passwd: points outside the bundle"},
		{"parent of root", map[string]string{"a/l": "link:../../x"}, "points outside the bundle"},
		{"dotdot through link", map[string]string{"d/up": "link:..", "d/out": "link:up/.."}, "symlink d/out -> up/..: points outside the bundle"},
		{"chain out", map[string]string{"a/b/c": "link:../..", "x": "link:a/b/c/.."}, "points outside the bundle"},
		{"loop", map[string]string{"a": "link:b", "b": "link:a"}, "too many levels of symbolic links"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			writeTree(t, dir, tc.files)
			es, err := walkTree(context.Background(), dir, walkOptions{strict: true})
			if err != nil {
				t.Fatal(err)
			}
			err = checkSymlinks(es)
			switch {
			case tc.bad == "" && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case tc.bad != "" && (err == nil || !strings.Contains(err.Error(), tc.bad)):
				t.Fatalf("err = %v, want it to contain %q", err, tc.bad)
			}
		})
	}
}

func TestDiffEntries(t *testing.T) {
	want := []entry{
		{Path: "a", Type: typeFile, Mode: 0o644, SHA256: "1"},
		{Path: "b", Type: typeFile, Mode: 0o644, SHA256: "2"},
		{Path: "c", Type: typeFile, Mode: 0o644, SHA256: "3"},
		{Path: "d", Type: typeFile, Mode: 0o644, SHA256: "4"},
		{Path: "e", Type: typeSymlink, Target: "a"},
		{Path: "f", Type: typeFile, Mode: 0o644, SHA256: "6"},
		{Path: "g", Type: typeFile, Mode: 0o644, SHA256: "7"},
	}
	got := []entry{
		{Path: "a", Type: typeFile, Mode: 0o644, SHA256: "1"},
		{Path: "b", Type: typeFile, Mode: 0o644, SHA256: "changed"},
		{Path: "d", Type: typeFile, Mode: 0o755, SHA256: "4"},
		{Path: "dd", Type: typeFile, Mode: 0o644, SHA256: "new"},
		{Path: "e", Type: typeSymlink, Target: "b"},
		{Path: "f", Type: typeDir, Mode: 0o755},
		{Path: "g", Type: typeFile, Mode: 0o600, SHA256: "changed"},
	}
	wantEvidence := []string{
		"modified b",
		"removed c",
		"mode d 0644->0755",
		"added dd",
		"modified e",
		"type f file->dir",
		"modified g (mode 0644->0600)",
	}
	if ev := diffEntries(want, got); !reflect.DeepEqual(ev, wantEvidence) {
		t.Fatalf("evidence\n got %q\nwant %q", ev, wantEvidence)
	}
}

// TestWalkDoesNotFollowSymlinkRoot: a root that is a symlink (or a
// file) is reported, never walked; a symlink below the root is an entry.
func TestWalkDoesNotFollowSymlinkRoot(t *testing.T) {
	target := t.TempDir()
	writeTree(t, target, map[string]string{"secret": "s", "sub/x": "x"})
	dir := t.TempDir()
	link := filepath.Join(dir, "link")
	file := filepath.Join(dir, "file")
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for root, typ := range map[string]string{link: typeSymlink, file: typeFile} {
		for _, strict := range []bool{true, false} {
			es, err := walkTree(context.Background(), root, walkOptions{strict: strict})
			var nd *notDirError
			if !errors.As(err, &nd) || nd.Type != typ || len(es) != 0 {
				t.Errorf("walk %s (strict %v): %d entries, err %v; want a %s root error", filepath.Base(root), strict, len(es), err, typ)
			}
		}
		if _, err := copyTree(context.Background(), root, filepath.Join(t.TempDir(), "copy"), walkOptions{}); !errors.As(err, new(*notDirError)) {
			t.Errorf("copy from %s: %v", filepath.Base(root), err)
		}
	}
	// Below the root, a symlink to a directory is an entry, not descended into.
	tree := t.TempDir()
	if err := os.Symlink(target, filepath.Join(tree, "l")); err != nil {
		t.Fatal(err)
	}
	es, err := walkTree(context.Background(), tree, walkOptions{strict: true})
	if err != nil || len(es) != 1 || es[0].Type != typeSymlink || es[0].Target != target {
		t.Fatalf("walk = %+v, %v", es, err)
	}
	// A missing root is an error when strict, nothing otherwise.
	missing := filepath.Join(dir, "missing")
	if _, err := walkTree(context.Background(), missing, walkOptions{strict: true}); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("strict walk of a missing root: %v", err)
	}
	if es, err := walkTree(context.Background(), missing, walkOptions{}); err != nil || len(es) != 0 {
		t.Errorf("lenient walk of a missing root: %v, %v", es, err)
	}
}
