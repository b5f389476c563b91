package local

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestImportPinsContent(t *testing.T) {
	p, _ := newProvider(t, t.TempDir())
	bundle := makeBundle(t, "1.0.0")
	d1 := importBundle(t, p, bundle)
	if d1 != digestOf(t, bundle) {
		t.Fatalf("import digest %s, bundle tree digest %s", d1, digestOf(t, bundle))
	}
	stored := p.imageDir(d1)
	if digestOf(t, stored) != d1 {
		t.Fatal("stored tree does not match its digest")
	}
	if _, err := os.Stat(p.recordPath(d1)); err != nil {
		t.Fatalf("entry manifest: %v", err)
	}

	// Editing the source bundle never reaches the stored image.
	writeTree(t, bundle, map[string]string{"config/app.conf": "greeting = \"edited\"\n", "new.txt": "new"})
	if digestOf(t, stored) != d1 {
		t.Fatal("stored image changed after the source bundle was edited")
	}
	conf, err := os.ReadFile(filepath.Join(stored, "config/app.conf"))
	if err != nil || !strings.Contains(string(conf), "hello from 1.0.0") {
		t.Fatalf("stored config = %q, %v", conf, err)
	}
	d2, err := p.Resolve(t.Context(), bundle)
	if err != nil {
		t.Fatal(err)
	}
	if d2 == d1 {
		t.Fatal("edited bundle got the old digest")
	}
	if digestOf(t, p.imageDir(d1)) != d1 || digestOf(t, p.imageDir(d2)) != d2 {
		t.Fatal("stored images do not match their digests")
	}
}

func TestImportIdempotentAndRepairsCorruption(t *testing.T) {
	dir := t.TempDir()
	p, logs := newProvider(t, dir)
	bundle := makeBundle(t, "1.0.0")
	d := importBundle(t, p, bundle)
	if again := importBundle(t, p, bundle); again != d {
		t.Fatalf("second import: %s, first %s", again, d)
	}
	if n := logs.FilterMessage("image imported").Len(); n != 1 {
		t.Fatalf("%d imports logged, want 1", n)
	}
	conf := filepath.Join(p.imageDir(d), "config/app.conf")
	if err := os.WriteFile(conf, []byte("tampered"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(p.recordPath(d)); err != nil {
		t.Fatal(err)
	}
	if again := importBundle(t, p, bundle); again != d {
		t.Fatalf("re-import: %s, want %s", again, d)
	}
	if logs.FilterMessage("stored image is corrupted, importing it again").Len() != 1 {
		t.Fatal("corruption not logged")
	}
	if digestOf(t, p.imageDir(d)) != d {
		t.Fatal("corrupted image not repaired")
	}
	if _, err := p.loadImageRecord(d); err != nil {
		t.Fatalf("entry manifest not rewritten: %v", err)
	}
	// No staging directories are left behind.
	des, err := os.ReadDir(filepath.Join(dir, "images"))
	if err != nil {
		t.Fatal(err)
	}
	for _, de := range des {
		if strings.HasPrefix(de.Name(), ".") {
			t.Errorf("leftover %s", de.Name())
		}
	}
}

// badBundle is a bundle Import must refuse.
type badBundle struct {
	name  string
	setup func(t *testing.T, dir string) // nil: the bundle is a file
	want  []string                       // substrings of the error
}

// makeBadBundle creates the bundle of tc below a temp dir and returns its path.
func makeBadBundle(t *testing.T, tc badBundle) string {
	t.Helper()
	bundle := filepath.Join(t.TempDir(), "bundle")
	if tc.setup != nil {
		if err := os.Mkdir(bundle, 0o755); err != nil {
			t.Fatal(err)
		}
		tc.setup(t, bundle)
	} else if err := os.WriteFile(bundle, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	return bundle
}

func badBundles() []badBundle {
	good := `{"name": "a", "version": "1", "entrypoint": ["bin/app"]}`
	return []badBundle{
		{"no manifest", func(t *testing.T, dir string) {
			writeTree(t, dir, map[string]string{"bin/app": "x"})
		}, []string{"manifest.json: missing"}},
		{"bad json", func(t *testing.T, dir string) {
			writeTree(t, dir, map[string]string{"manifest.json": "{"})
		}, []string{"manifest.json: unexpected EOF"}},
		{"trailing data", func(t *testing.T, dir string) {
			writeTree(t, dir, map[string]string{"manifest.json": good + "{}"})
			writeExec(t, dir, "bin/app")
		}, []string{"manifest.json: unexpected data after the JSON object"}},
		{"unknown field", func(t *testing.T, dir string) {
			writeTree(t, dir, map[string]string{"manifest.json": `{"name": "a", "cmd": []}`})
		}, []string{`manifest.json: json: unknown field "cmd"`}},
		{"all problems at once", func(t *testing.T, dir string) {
			writeTree(t, dir, map[string]string{"manifest.json": `{}`})
		}, []string{`"name" is required; "version" is required; "entrypoint" is required`}},
		{"entrypoint missing", func(t *testing.T, dir string) {
			writeTree(t, dir, map[string]string{"manifest.json": good})
		}, []string{`"entrypoint" "bin/app" does not exist in the bundle`}},
		{"entrypoint not executable", func(t *testing.T, dir string) {
			writeTree(t, dir, map[string]string{"manifest.json": good, "bin/app": "x"})
		}, []string{`"entrypoint" "bin/app" is not executable (mode 0644)`}},
		{"entrypoint absolute", func(t *testing.T, dir string) {
			writeTree(t, dir, map[string]string{"manifest.json": `{"name": "a", "version": "1", "entrypoint": ["/bin/sh"]}`})
		}, []string{`"entrypoint" "/bin/sh" must be a clean slash path relative to the bundle root`}},
		{"entrypoint is a dir", func(t *testing.T, dir string) {
			writeTree(t, dir, map[string]string{"manifest.json": good, "bin/app": "dir:"})
		}, []string{`"entrypoint" "bin/app" is a dir, not a file`}},
		{"fifo", func(t *testing.T, dir string) {
			writeTree(t, dir, map[string]string{"manifest.json": good})
			writeExec(t, dir, "bin/app")
			if err := unix.Mkfifo(filepath.Join(dir, "pipe"), 0o644); err != nil {
				t.Fatal(err)
			}
		}, []string{"pipe: fifo files are not allowed"}},
		{"escaping symlink", func(t *testing.T, dir string) {
			writeTree(t, dir, map[string]string{"manifest.json": good, "etc": "link:../../etc"})
			writeExec(t, dir, "bin/app")
		}, []string{"symlink etc -> ../../etc: points outside the bundle"}},
		{"manifest is a dir", func(t *testing.T, dir string) {
			writeTree(t, dir, map[string]string{"manifest.json": "dir:"})
		}, []string{"manifest.json: is a directory"}},
		{"missing", func(t *testing.T, dir string) {
			if err := os.Remove(dir); err != nil {
				t.Fatal(err)
			}
		}, []string{"no such file or directory"}},
		{"not a directory", nil, []string{"not a directory"}},
	}
}

func TestImportRejects(t *testing.T) {
	for _, tc := range badBundles() {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			p, _ := newProvider(t, dir)
			bundle := makeBadBundle(t, tc)
			_, err := p.Import(t.Context(), bundle)
			if err == nil {
				t.Fatal("import succeeded")
			}
			if !strings.HasPrefix(err.Error(), "local: import "+bundle+": ") {
				t.Errorf("error %q lacks the context prefix", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
			if strings.Contains(tc.name, "manifest") || strings.Contains(tc.name, "json") {
				if !strings.Contains(err.Error(), filepath.Join(bundle, "manifest.json")) {
					t.Errorf("error %q does not name the manifest file", err)
				}
			}
			des, err := os.ReadDir(filepath.Join(dir, "images"))
			if err != nil {
				t.Fatal(err)
			}
			if len(des) != 0 {
				t.Errorf("failed import left %d entries in the store", len(des))
			}
		})
	}
}

func writeExec(t *testing.T, dir, rel string) {
	t.Helper()
	full := filepath.Join(dir, rel)
	if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(full, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
}

// TestCheckBundle: CheckBundle accepts what Import accepts and refuses
// what Import refuses, with the same error text after the prefix.
func TestCheckBundle(t *testing.T) {
	good := makeBundle(t, "1.0.0")
	if err := CheckBundle(t.Context(), good); err != nil {
		t.Fatalf("good bundle: %v", err)
	}
	// Through a symlinked path, as operators point at a current release.
	link := filepath.Join(t.TempDir(), "current")
	if err := os.Symlink(good, link); err != nil {
		t.Fatal(err)
	}
	if err := CheckBundle(t.Context(), link); err != nil {
		t.Fatalf("symlinked bundle path: %v", err)
	}
	for _, tc := range badBundles() {
		t.Run(tc.name, func(t *testing.T) {
			bundle := makeBadBundle(t, tc)
			before := digestOrNone(bundle)
			checkErr := CheckBundle(t.Context(), bundle)
			if checkErr == nil {
				t.Fatal("CheckBundle accepted it")
			}
			if digestOrNone(bundle) != before {
				t.Fatal("CheckBundle changed the bundle")
			}
			p, _ := newProvider(t, t.TempDir())
			_, importErr := p.Import(t.Context(), bundle)
			if importErr == nil {
				t.Fatal("Import accepted it")
			}
			got, ok1 := strings.CutPrefix(checkErr.Error(), "local: check bundle "+bundle+": ")
			want, ok2 := strings.CutPrefix(importErr.Error(), "local: import "+bundle+": ")
			if !ok1 || !ok2 || got != want {
				t.Fatalf("CheckBundle: %q\nImport:      %q", checkErr, importErr)
			}
			for _, w := range tc.want {
				if !strings.Contains(got, w) {
					t.Errorf("error %q lacks %q", got, w)
				}
			}
		})
	}
}

// digestOrNone is the lenient digest of a tree, to see that it did not change.
func digestOrNone(dir string) string {
	es, err := walkTree(context.Background(), dir, walkOptions{})
	if err != nil {
		return err.Error()
	}
	return treeDigest(es)
}

// TestImportThroughSymlinkedPath: the operator's bundle path may be a
// symlink (walks never follow one at their root, so Import resolves it).
func TestImportThroughSymlinkedPath(t *testing.T) {
	p, _ := newProvider(t, t.TempDir())
	bundle := makeBundle(t, "1.0.0")
	link := filepath.Join(t.TempDir(), "current")
	if err := os.Symlink(bundle, link); err != nil {
		t.Fatal(err)
	}
	if got, want := importBundle(t, p, link), importBundle(t, p, bundle); got != want {
		t.Fatalf("through the link %s, directly %s", got, want)
	}
}
