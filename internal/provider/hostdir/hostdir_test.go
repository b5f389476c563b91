package hostdir

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestRegisterAndCheckServers(t *testing.T) {
	dir := t.TempDir()
	if err := CheckServers("qemu", dir, []string{"only"}); err != nil {
		t.Fatalf("a single server: %v", err)
	}
	if err := Register(dir, "a1", "node-a"); err != nil {
		t.Fatal(err)
	}
	if err := Register(dir, "../x", "evil"); err == nil {
		t.Fatal("registered a node id with a path in it")
	}
	err := CheckServers("qemu", dir, []string{"a1", "b2"})
	if err == nil || !strings.Contains(err.Error(), "node ids b2") || !strings.Contains(err.Error(), "qemu provider directory") {
		t.Fatalf("a server that did not register: %v", err)
	}
	if err := Register(dir, "b2", "node-b"); err != nil {
		t.Fatal(err)
	}
	if err := CheckServers("qemu", dir, []string{"a1", "b2"}); err != nil {
		t.Fatalf("both registered: %v", err)
	}
}

// TestRemoveTree removes a tree with a read-only directory in it (for root,
// which the tests run as here, the mode is no obstacle; for other users it
// is what the chmod pass is for).
func TestRemoveTree(t *testing.T) {
	root := filepath.Join(t.TempDir(), "inst")
	if err := os.MkdirAll(filepath.Join(root, "ro", "deep"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "ro", "deep", "f"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Join(root, "ro"), 0o500); err != nil {
		t.Fatal(err)
	}
	if err := RemoveTree(root); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(root); !os.IsNotExist(err) {
		t.Fatalf("tree still there: %v", err)
	}
	if err := RemoveTree(root); err != nil {
		t.Fatalf("removing a missing tree: %v", err)
	}
}

func TestArchiveKeepsTheLastBytesWithinBounds(t *testing.T) {
	a, err := NewArchive(t.TempDir(), 10, 2, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Keep("i1", strings.NewReader("0123456789"), strings.NewReader("abcdef")); err != nil {
		t.Fatal(err)
	}
	if b, err := a.Read("i1", 100); err != nil || string(b) != "6789abcdef" {
		t.Fatalf("kept %q, %v; want the last 10 bytes", b, err)
	}
	if b, _ := a.Read("i1", 3); string(b) != "def" {
		t.Fatalf("Read(3) = %q", b)
	}
	if _, err := a.Read("nothing", 10); !os.IsNotExist(err) {
		t.Fatalf("Read of nothing kept: %v", err)
	}
	if err := a.Keep("../x", strings.NewReader("x")); err == nil {
		t.Fatal("kept output under an id with a path in it")
	}
	must := func(err error) {
		if err != nil {
			t.Fatal(err)
		}
	}
	// Older than an hour goes; beyond 2 kept, the oldest goes (times set
	// here: the file system's clock is coarser than these writes).
	must(a.Keep("i2", strings.NewReader("i2")))
	for id, age := range map[string]time.Duration{"i1": 2 * time.Hour, "i2": time.Minute} {
		at := time.Now().Add(-age)
		must(os.Chtimes(a.Path(id), at, at))
	}
	must(a.Keep("i3", strings.NewReader("i3")))
	for id, kept := range map[string]bool{"i1": false, "i2": true, "i3": true} {
		if _, err := os.Stat(a.Path(id)); (err == nil) != kept {
			t.Errorf("%s kept %v, want %v", id, err == nil, kept)
		}
	}
	at := time.Now().Add(-30 * time.Second)
	must(os.Chtimes(a.Path("i3"), at, at))
	must(a.Keep("i5", strings.NewReader("i5")))
	for id, kept := range map[string]bool{"i2": false, "i3": true, "i5": true} {
		if _, err := os.Stat(a.Path(id)); (err == nil) != kept {
			t.Errorf("after a third: %s kept %v, want %v", id, err == nil, kept)
		}
	}
	big := strings.Repeat("x", 1000) + "end"
	must(a.Keep("i4", strings.NewReader(big)))
	if b, _ := a.Read("i4", 100); string(b) != "xxxxxxxend" {
		t.Fatalf("a long output kept as %q", b)
	}
}
