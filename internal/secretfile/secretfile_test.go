package secretfile

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

func TestRead(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, mode os.FileMode, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := write("good", 0o600, "secret")
	if b, err := Read("token file", good, 64); err != nil || string(b) != "secret" {
		t.Fatalf("0600 file: %q %v", b, err)
	}
	if b, err := Read("token file", write("ro", 0o400, "x"), 64); err != nil || string(b) != "x" {
		t.Fatalf("0400 file: %q %v", b, err)
	}
	for _, mode := range []os.FileMode{0o640, 0o604, 0o620, 0o644, 0o666} {
		p := write("open", mode, "secret")
		_, err := Read("token file", p, 64)
		if !errors.Is(err, ErrTooOpen) || !strings.Contains(err.Error(), "chmod 600 "+p) {
			t.Errorf("mode %04o: %v", mode, err)
		}
	}
	if _, err := Read("token file", write("big", 0o600, strings.Repeat("x", 65)), 64); err == nil || !strings.Contains(err.Error(), "at most 64") {
		t.Errorf("oversized file: %v", err)
	}
	link := filepath.Join(dir, "link")
	if err := os.Symlink(good, link); err != nil {
		t.Fatal(err)
	}
	if b, err := Read("token file", link, 64); err != nil || string(b) != "secret" {
		t.Errorf("symlink to a good file: %q %v", b, err)
	}
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Read("token file", fifo, 64); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("fifo: %v", err)
	}
	if _, err := Read("token file", dir, 64); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("directory: %v", err)
	}
	if _, err := Read("token file", filepath.Join(dir, "absent"), 64); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("absent: %v", err)
	}
}
