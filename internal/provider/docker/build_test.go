package docker

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/docker/docker/api/types/image"
)

func TestBuildImage(t *testing.T) {
	p := needEngine(t)
	dir := t.TempDir()
	writeFiles(t, dir, map[string][]byte{
		"Dockerfile": []byte("FROM scratch\nCOPY hello.txt /hello.txt\nCOPY sub/ /sub/\nLABEL " + testRunLabel + "=" + runID + "\n"),
		"hello.txt":  []byte("hello\n"),
	})
	if err := os.MkdirAll(filepath.Join(dir, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	writeFiles(t, filepath.Join(dir, "sub"), map[string][]byte{"a.txt": []byte("a\n")})
	if err := os.Symlink("a.txt", filepath.Join(dir, "sub", "link")); err != nil {
		t.Fatal(err)
	}
	tag := runID + "/tiny:1"
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
		defer cancel()
		if _, err := p.cli.ImageRemove(ctx, tag, image.RemoveOptions{Force: true, PruneChildren: true}); err != nil {
			t.Errorf("cleanup: remove %s: %v", tag, err)
		}
	})
	id, err := BuildImage(testCtx(t), p, dir, []string{tag})
	if err != nil {
		t.Fatal(err)
	}
	if got, err := p.Resolve(testCtx(t), tag); err != nil || got != id {
		t.Fatalf("Resolve(%s) = %s, %v; want %s", tag, got, err, id)
	}

	// A failing build reports the engine's error.
	bad := t.TempDir()
	writeFiles(t, bad, map[string][]byte{"Dockerfile": []byte("FROM scratch\nCOPY missing.txt /\n")})
	if _, err := BuildImage(testCtx(t), p, bad, nil); err == nil || !strings.Contains(err.Error(), "missing.txt") {
		t.Fatalf("build with a missing file: %v", err)
	}
	if _, err := BuildImage(testCtx(t), p, t.TempDir(), nil); err == nil || !strings.Contains(err.Error(), "no Dockerfile") {
		t.Fatalf("build without a Dockerfile: %v", err)
	}
}
