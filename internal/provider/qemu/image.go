package qemu

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"syscall"

	"github.com/immutd/immutd/internal/instance"
	"github.com/immutd/immutd/internal/vmimage"
)

// imageInfo is a stored image: its directory and manifest.
type imageInfo struct {
	dir string
	man vmimage.Manifest
}

var digestRE = regexp.MustCompile(`^sha256:([0-9a-f]{64})$`)

// Resolve pins a fleet's image reference (a VM image directory, see
// internal/vmimage) to its digest by importing it.
func (p *Provider) Resolve(ctx context.Context, ref string) (string, error) {
	return p.Import(ctx, ref)
}

// Import copies the VM image in dir into the store and returns its
// digest, "sha256:" and the sha256 of a listing of the manifest and the
// files it names (name, size and sha256 of each). Later changes to dir
// never reach an instance. Importing an image that is stored already
// copies nothing.
func (p *Provider) Import(ctx context.Context, dir string) (string, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", fmt.Errorf("qemu: import %s: %w", dir, err)
	}
	man, err := vmimage.ReadManifest(abs)
	if err != nil {
		return "", fmt.Errorf("qemu: import: %w", err)
	}
	digest, err := imageDigest(ctx, abs, man)
	if err != nil {
		return "", fmt.Errorf("qemu: import %s: %w", abs, err)
	}
	select {
	case p.importSem <- struct{}{}:
		defer func() { <-p.importSem }()
	case <-ctx.Done():
		return "", ctx.Err()
	}
	dst := p.imageDir(digest)
	if _, err := os.Stat(filepath.Join(dst, vmimage.ManifestName)); err == nil {
		return digest, nil
	}
	if err := p.copyImage(ctx, abs, man, digest); err != nil {
		return "", fmt.Errorf("qemu: import %s: %w", abs, err)
	}
	p.log.Info("imported vm image " + abs + " as " + digest)
	return digest, nil
}

func (p *Provider) copyImage(ctx context.Context, src string, man vmimage.Manifest, digest string) error {
	var rnd [6]byte
	_, _ = rand.Read(rnd[:])
	stage := filepath.Join(p.imagesDir, ".import-"+hex.EncodeToString(rnd[:]))
	if err := os.Mkdir(stage, 0o750); err != nil {
		return err
	}
	defer os.RemoveAll(stage)
	for _, name := range man.Files() {
		if err := copyFile(filepath.Join(src, name), filepath.Join(stage, name)); err != nil {
			return err
		}
	}
	// The source may have changed while it was copied: the copy must be
	// what was hashed.
	got, err := imageDigest(ctx, stage, man)
	if err != nil {
		return err
	}
	if got != digest {
		return fmt.Errorf("the image changed while it was imported (digest %s, copy %s); import it again", digest, got)
	}
	for _, name := range man.Files() {
		if err := os.Chmod(filepath.Join(stage, name), 0o444); err != nil {
			return err
		}
	}
	if err := os.Rename(stage, p.imageDir(digest)); err != nil {
		if _, serr := os.Stat(filepath.Join(p.imageDir(digest), vmimage.ManifestName)); serr == nil {
			return nil // another agent sharing the directory imported it meanwhile
		}
		return err
	}
	return nil
}

func copyFile(src, dst string) error {
	in, err := openNoFollow(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o640)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	if err := out.Sync(); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// imageDigest hashes the manifest and the files it names.
func imageDigest(ctx context.Context, dir string, man vmimage.Manifest) (string, error) {
	list := sha256.New()
	for _, name := range man.Files() {
		if err := ctx.Err(); err != nil {
			return "", err
		}
		f, err := openNoFollow(filepath.Join(dir, name))
		if err != nil {
			return "", err
		}
		h := sha256.New()
		n, err := io.Copy(h, f)
		f.Close()
		if err != nil {
			return "", err
		}
		fmt.Fprintf(list, "%s\x00%d\x00%x\n", name, n, h.Sum(nil))
	}
	return "sha256:" + hex.EncodeToString(list.Sum(nil)), nil
}

func (p *Provider) imageDir(digest string) string {
	return filepath.Join(p.imagesDir, digest[len("sha256:"):])
}

// image returns the stored image with this digest.
func (p *Provider) image(digest string) (imageInfo, error) {
	if !digestRE.MatchString(digest) {
		return imageInfo{}, instance.Permanent(fmt.Errorf("qemu: image digest %q: want sha256:<64 hex digits>", digest))
	}
	p.mu.Lock()
	info, ok := p.imageMan[digest]
	p.mu.Unlock()
	if ok {
		return info, nil
	}
	dir := p.imageDir(digest)
	man, err := vmimage.ReadManifest(dir)
	if errors.Is(err, os.ErrNotExist) {
		return imageInfo{}, instance.Permanent(fmt.Errorf("qemu: image %s is not in the store %s (fleet files import it when they name its directory)", digest, p.imagesDir))
	}
	if err != nil {
		return imageInfo{}, err
	}
	info = imageInfo{dir: dir, man: man}
	p.mu.Lock()
	p.imageMan[digest] = info
	p.mu.Unlock()
	return info, nil
}

// openNoFollow opens a file of an image for reading, refusing a symlink
// (ReadManifest checked that each is a regular file; this closes the gap
// between that check and the read).
func openNoFollow(path string) (*os.File, error) {
	return os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
}
