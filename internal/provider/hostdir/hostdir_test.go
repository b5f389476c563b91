package hostdir

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
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
