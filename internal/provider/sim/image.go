package sim

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/immutd/immutd/internal/instance"
)

// A sim image is any file or directory. Nothing of it runs; its digest
// pins a fleet's version, so that a changed image rolls the fleet.

// simConfigFile, at the top of an image directory, sets how its
// instances behave.
const simConfigFile = "sim.json"

// Bounds of an image.
const (
	maxImageEntries = 100000
	maxExitAfter    = 24 * time.Hour
)

// imageSpec is what the store keeps of an image: images/<hex>.json.
type imageSpec struct {
	Source string `json:"source"`
	// ExitAfter, when set, makes instances exit by themselves that long
	// after they start (nanoseconds).
	ExitAfter *int64 `json:"exit_after_ns,omitempty"`
}

// Resolve pins a fleet's image reference (a file or directory) to its
// digest by importing it.
func (p *Provider) Resolve(ctx context.Context, ref string) (string, error) {
	return p.Import(ctx, ref)
}

// Import hashes the image at path and records it in the store; it
// returns its digest ("sha256:<hex>").
func (p *Provider) Import(ctx context.Context, path string) (string, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", fmt.Errorf("sim: import %s: %w", path, err)
	}
	digest, spec, err := hashImage(ctx, abs)
	if err != nil {
		return "", fmt.Errorf("sim: import %s: %w", abs, err)
	}
	b, err := json.Marshal(spec)
	if err != nil {
		return "", err
	}
	hexd := digest[len("sha256:"):]
	final := filepath.Join(p.imagesDir, hexd+".json")
	if old, err := os.ReadFile(final); err != nil || !bytes.Equal(old, b) {
		tmp, err := os.CreateTemp(p.imagesDir, ".import-*")
		if err != nil {
			return "", fmt.Errorf("sim: import %s: %w", abs, err)
		}
		_, werr := tmp.Write(b)
		cerr := tmp.Close()
		if err := errors.Join(werr, cerr); err != nil {
			os.Remove(tmp.Name())
			return "", fmt.Errorf("sim: import %s: %w", abs, err)
		}
		if err := os.Rename(tmp.Name(), final); err != nil {
			os.Remove(tmp.Name())
			return "", fmt.Errorf("sim: import %s: %w", abs, err)
		}
	}
	p.mu.Lock()
	p.images[digest] = spec
	p.mu.Unlock()
	return digest, nil
}

// image returns an imported image; a digest the store lacks is a
// permanent error.
func (p *Provider) image(digest string) (imageSpec, error) {
	p.mu.Lock()
	spec, ok := p.images[digest]
	p.mu.Unlock()
	if ok {
		return spec, nil
	}
	m := digestRE.FindStringSubmatch(digest)
	if m == nil {
		return spec, instance.Permanent(fmt.Errorf("image digest %q: want sha256:<64 hex digits>", digest))
	}
	b, err := os.ReadFile(filepath.Join(p.imagesDir, m[1]+".json"))
	if errors.Is(err, fs.ErrNotExist) {
		return spec, instance.Permanent(fmt.Errorf("image %s is not in the sim image store %s (import it first)", digest, p.imagesDir))
	}
	if err != nil {
		return spec, err
	}
	if err := json.Unmarshal(b, &spec); err != nil {
		return spec, fmt.Errorf("image %s: %w", digest, err)
	}
	p.mu.Lock()
	p.images[digest] = spec
	p.mu.Unlock()
	return spec, nil
}

// hashImage walks the image (without following symlinks) and hashes a
// manifest of it: one line per entry with its path, type, mode and, for
// files, the SHA-256 of the content; symlinks by their target.
func hashImage(ctx context.Context, root string) (string, imageSpec, error) {
	spec := imageSpec{Source: root}
	fi, err := os.Stat(root)
	if err != nil {
		return "", spec, err
	}
	// A symlinked root is the operator's choice (images/current -> v3).
	if root, err = filepath.EvalSymlinks(root); err != nil {
		return "", spec, err
	}
	man := sha256.New()
	n := 0
	err = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if n++; n > maxImageEntries {
			return fmt.Errorf("more than %d entries", maxImageEntries)
		}
		rel, err := filepath.Rel(root, path)
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		line := strconv.Quote(filepath.ToSlash(rel)) + " " + strconv.FormatUint(uint64(info.Mode()), 8)
		switch {
		case info.Mode().IsRegular():
			sum, err := hashFile(path)
			if err != nil {
				return err
			}
			line += " " + sum
		case info.Mode()&fs.ModeSymlink != 0:
			target, err := os.Readlink(path)
			if err != nil {
				return err
			}
			line += " -> " + strconv.Quote(target)
		}
		_, _ = io.WriteString(man, line+"\n")
		return nil
	})
	if err != nil {
		return "", spec, err
	}
	if fi.IsDir() {
		b, err := os.ReadFile(filepath.Join(root, simConfigFile))
		switch {
		case err == nil:
			var c struct {
				ExitAfter *string `json:"exit_after"`
			}
			dec := json.NewDecoder(bytes.NewReader(b))
			dec.DisallowUnknownFields()
			if err := dec.Decode(&c); err != nil {
				return "", spec, fmt.Errorf("%s: %w", simConfigFile, err)
			}
			if c.ExitAfter != nil {
				d, err := time.ParseDuration(*c.ExitAfter)
				if err != nil || d < 0 || d > maxExitAfter {
					return "", spec, fmt.Errorf("%s: exit_after %q: want a duration from 0s to %s", simConfigFile, *c.ExitAfter, maxExitAfter)
				}
				ns := int64(d)
				spec.ExitAfter = &ns
			}
		case !errors.Is(err, fs.ErrNotExist):
			return "", spec, err
		}
	}
	return "sha256:" + hex.EncodeToString(man.Sum(nil)), spec, nil
}

func hashFile(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	s := sha256.New()
	if _, err := io.Copy(s, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(s.Sum(nil)), nil
}
