package local

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// writableExecutable writes a tiny shell script and returns its path
// with a descriptor still open for writing, which makes exec fail with
// ETXTBSY, as when a concurrent fork inherited a launch's copy.
func writableExecutable(t *testing.T) (string, *os.File) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "run")
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString("#!/bin/sh\nexit 0\n"); err != nil {
		t.Fatal(err)
	}
	return path, f
}

func TestStartRetryingWaitsForTheBusyExecutable(t *testing.T) {
	path, f := writableExecutable(t)
	if err := exec.Command(path).Start(); !errors.Is(err, syscall.ETXTBSY) {
		f.Close()
		t.Fatalf("exec of a file open for writing: got %v, want ETXTBSY (the test's premise)", err)
	}
	go func() {
		time.Sleep(30 * time.Millisecond)
		f.Close()
	}()
	starts := 0
	cmd, err := startRetrying(context.Background(), func() *exec.Cmd { starts++; return exec.Command(path) })
	if err != nil {
		t.Fatalf("start once the writer closed: %v", err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	if starts < 2 {
		t.Fatalf("%d start attempts, want a retry", starts)
	}
}

func TestStartRetryingGivesUp(t *testing.T) {
	path, f := writableExecutable(t)
	defer f.Close()
	starts := 0
	_, err := startRetrying(context.Background(), func() *exec.Cmd { starts++; return exec.Command(path) })
	if !errors.Is(err, syscall.ETXTBSY) {
		t.Fatalf("got %v, want ETXTBSY after the retries", err)
	}
	if starts != 7 {
		t.Fatalf("%d attempts, want 7", starts)
	}

	// Other errors are not retried.
	starts = 0
	_, err = startRetrying(context.Background(), func() *exec.Cmd { starts++; return exec.Command(filepath.Join(t.TempDir(), "missing")) })
	if err == nil || starts != 1 {
		t.Fatalf("missing executable: %d attempts, err %v; want 1 attempt and an error", starts, err)
	}
}
