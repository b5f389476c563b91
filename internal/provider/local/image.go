package local

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/immutd/immutd/internal/instance"
	"github.com/immutd/immutd/internal/provider/hostdir"
	"go.uber.org/zap"
)

// manifestFile is the name of a bundle's manifest.
const manifestFile = "manifest.json"

// bundleManifest is a bundle's manifest.json.
type bundleManifest struct {
	Name    string `json:"name"`
	Version string `json:"version"`
	// Entrypoint is the command, its first element a slash path relative
	// to the instance root.
	Entrypoint []string `json:"entrypoint"`
}

// imageRecord is stored beside an image as <hex>.entries.json: the
// per-entry manifest drift checks compare instance roots against.
type imageRecord struct {
	Digest   string         `json:"digest"`
	Manifest bundleManifest `json:"manifest"`
	Entries  []entry        `json:"entries"`
}

// Resolve turns a fleet's image reference (a bundle directory) into a
// pinned digest by importing it.
func (p *Provider) Resolve(ctx context.Context, ref string) (string, error) {
	return p.Import(ctx, ref)
}

// Import copies the bundle directory into the image store and returns
// its digest ("sha256:<hex>"). Importing an unchanged bundle again
// writes nothing: the bundle and the stored copy are both hashed and,
// when they match, the digest is returned. A stored copy that no longer
// matches its digest is replaced by a fresh copy of the bundle.
func (p *Provider) Import(ctx context.Context, bundleDir string) (string, error) {
	abs, err := filepath.Abs(bundleDir)
	if err != nil {
		return "", fmt.Errorf("local: import %s: %w", bundleDir, err)
	}
	digest, err := p.importBundle(ctx, abs)
	if err != nil {
		return "", fmt.Errorf("local: import %s: %w", abs, err)
	}
	return digest, nil
}

// CheckBundle runs every check Import runs on the bundle directory dir,
// with the same error texts, and copies nothing: a strict walk (no
// special files, every file readable), symlinks that stay inside the
// bundle, and a valid manifest.json with a name, a version and an
// executable entrypoint inside the bundle.
func CheckBundle(ctx context.Context, dir string) error {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return fmt.Errorf("local: check bundle %s: %w", dir, err)
	}
	if err := checkBundle(ctx, abs); err != nil {
		return fmt.Errorf("local: check bundle %s: %w", abs, err)
	}
	return nil
}

func checkBundle(ctx context.Context, bundle string) error {
	root, err := bundleRoot(bundle)
	if err != nil {
		return err
	}
	entries, err := walkTree(ctx, root, walkOptions{strict: true})
	if err != nil {
		return err
	}
	_, err = checkTree(root, bundle, entries)
	return err
}

// bundleRoot checks that the operator's bundle path names a directory
// and returns it with symlinks resolved: a path like bundles/current ->
// v3 is a deliberate choice, while walks never follow a symlink root.
func bundleRoot(bundle string) (string, error) {
	fi, err := os.Stat(bundle)
	if err != nil {
		return "", err
	}
	if !fi.IsDir() {
		return "", errors.New("not a directory")
	}
	return filepath.EvalSymlinks(bundle)
}

// checkTree runs the checks on a walked bundle tree rooted at root
// (the bundle, or Import's copy of it): symlinks stay inside and the
// manifest is valid. Errors name the manifest of the bundle itself.
func checkTree(root, bundle string, entries []entry) (bundleManifest, error) {
	if err := checkSymlinks(entries); err != nil {
		return bundleManifest{}, err
	}
	return loadManifest(root, filepath.Join(bundle, manifestFile), entries)
}

func (p *Provider) importBundle(ctx context.Context, bundle string) (string, error) {
	root, err := bundleRoot(bundle)
	if err != nil {
		return "", err
	}
	// Fast path, taken on every resolve of an unchanged bundle: hash the
	// bundle, and if the store holds an intact copy of that tree (checked
	// by hashing it too), nothing needs to be written. That copy passed
	// every check when it was imported, and the digest covers all the
	// checks look at.
	src, err := walkTree(ctx, root, walkOptions{strict: true})
	if err != nil {
		return "", err
	}
	if digest := treeDigest(src); p.storedIntact(ctx, digest) {
		if _, err := p.record(ctx, digest); err == nil {
			return digest, nil
		}
	}
	if err := ctx.Err(); err != nil {
		return "", err
	}

	select {
	case p.importSem <- struct{}{}:
	case <-ctx.Done():
		return "", ctx.Err()
	}
	defer func() { <-p.importSem }()

	tmp, err := os.MkdirTemp(p.imagesDir, stagingPrefix)
	if err != nil {
		return "", err
	}
	defer func() {
		if err := hostdir.RemoveTree(tmp); err != nil {
			p.log.Warn("remove staging directory failed", zap.String("path", tmp), zap.Error(err))
		}
	}()
	stage := filepath.Join(tmp, "tree")
	// The checks run on the copy: what is stored is what was checked.
	entries, err := copyTree(ctx, root, stage, walkOptions{fsync: true})
	if err != nil {
		return "", err
	}
	man, err := checkTree(stage, bundle, entries)
	if err != nil {
		return "", err
	}
	digest := treeDigest(entries)
	final := p.imageDir(digest)

	if _, err := os.Lstat(final); err == nil {
		if p.storedIntact(ctx, digest) {
			if err := p.writeImageRecord(digest, man, entries); err != nil {
				return "", err
			}
			return digest, nil
		}
		if err := ctx.Err(); err != nil {
			return "", err
		}
		p.log.Warn("stored image is corrupted, importing it again", zap.String("image", digest))
		// Move it aside first, so a crash never leaves a half-removed
		// tree under the digest's name.
		if err := os.Rename(final, filepath.Join(tmp, "corrupted")); err != nil {
			return "", err
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return "", err
	}
	if err := os.Rename(stage, final); err != nil {
		return "", err
	}
	if err := syncDir(p.imagesDir); err != nil {
		return "", err
	}
	if err := p.writeImageRecord(digest, man, entries); err != nil {
		return "", err
	}
	p.mu.Lock()
	delete(p.records, digest)
	p.mu.Unlock()
	p.log.Info("image imported", zap.String("image", digest), zap.String("bundle", bundle),
		zap.String("name", man.Name), zap.String("version", man.Version), zap.Int("entries", len(entries)))
	return digest, nil
}

// storedIntact reports whether the store holds the image and its tree
// still has the digest.
func (p *Provider) storedIntact(ctx context.Context, digest string) bool {
	stored, err := walkTree(ctx, p.imageDir(digest), walkOptions{strict: true})
	return err == nil && treeDigest(stored) == digest
}

// loadManifest reads and validates <root>/manifest.json; errors name
// shownPath (the bundle's own file) and list every problem at once.
func loadManifest(root, shownPath string, entries []entry) (bundleManifest, error) {
	var man bundleManifest
	b, err := os.ReadFile(filepath.Join(root, manifestFile))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return man, fmt.Errorf("%s: missing (a bundle needs a manifest.json)", shownPath)
		}
		// shownPath already names the file; the path inside err may be
		// that of Import's staging copy.
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return man, fmt.Errorf("%s: %w", shownPath, err)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&man); err != nil {
		return man, fmt.Errorf("%s: %w", shownPath, err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return man, fmt.Errorf("%s: unexpected data after the JSON object", shownPath)
	}
	var problems []string
	if strings.TrimSpace(man.Name) == "" {
		problems = append(problems, `"name" is required`)
	}
	if strings.TrimSpace(man.Version) == "" {
		problems = append(problems, `"version" is required`)
	}
	if len(man.Entrypoint) == 0 || man.Entrypoint[0] == "" {
		problems = append(problems, `"entrypoint" is required (e.g. ["bin/app"])`)
	} else if msg := checkEntrypoint(man.Entrypoint[0], entries); msg != "" {
		problems = append(problems, msg)
	}
	if len(problems) > 0 {
		return man, fmt.Errorf("%s: %s", shownPath, strings.Join(problems, "; "))
	}
	return man, nil
}

// checkEntrypoint says what is wrong with the entrypoint, or "".
func checkEntrypoint(ep string, entries []entry) string {
	if path.IsAbs(ep) || ep != path.Clean(ep) || ep == ".." || strings.HasPrefix(ep, "../") {
		return fmt.Sprintf(`"entrypoint" %q must be a clean slash path relative to the bundle root`, ep)
	}
	idx := indexEntries(entries)
	hops := 0
	segs, err := resolveInTree(idx, nil, ep, &hops)
	if err != nil {
		return fmt.Sprintf(`"entrypoint" %q: %v`, ep, err)
	}
	e, ok := idx[strings.Join(segs, "/")]
	switch {
	case !ok:
		return fmt.Sprintf(`"entrypoint" %q does not exist in the bundle`, ep)
	case e.Type != typeFile:
		return fmt.Sprintf(`"entrypoint" %q is a %s, not a file`, ep, e.Type)
	case e.Mode&0o111 == 0:
		return fmt.Sprintf(`"entrypoint" %q is not executable (mode %04o)`, ep, e.Mode)
	}
	return ""
}

// parseDigest checks a digest and returns its hex part.
func parseDigest(d string) (string, error) {
	h, ok := strings.CutPrefix(d, digestPrefix)
	if !ok || len(h) != 64 || strings.Trim(h, "0123456789abcdef") != "" {
		return "", fmt.Errorf("image digest %q is not of the form sha256:<64 hex digits>", d)
	}
	return h, nil
}

// imageDir is where the image with a valid digest is stored.
func (p *Provider) imageDir(digest string) string {
	return filepath.Join(p.imagesDir, strings.TrimPrefix(digest, digestPrefix))
}

func (p *Provider) recordPath(digest string) string {
	return p.imageDir(digest) + ".entries.json"
}

func (p *Provider) writeImageRecord(digest string, man bundleManifest, entries []entry) error {
	b, err := json.MarshalIndent(imageRecord{Digest: digest, Manifest: man, Entries: entries}, "", "  ")
	if err != nil {
		return err
	}
	return writeFileAtomic(p.recordPath(digest), append(b, '\n'))
}

// record returns the stored record of an image, rebuilding it from
// the stored tree (and checking that tree against the digest) when the
// record is missing or damaged. Records are cached: images are immutable.
func (p *Provider) record(ctx context.Context, digest string) (*imageRecord, error) {
	if _, err := parseDigest(digest); err != nil {
		return nil, err
	}
	p.mu.Lock()
	rec := p.records[digest]
	p.mu.Unlock()
	if rec != nil {
		return rec, nil
	}
	rec, err := p.loadImageRecord(digest)
	if err != nil {
		dir := p.imageDir(digest)
		entries, werr := walkTree(ctx, dir, walkOptions{strict: true})
		if werr != nil {
			if errors.Is(werr, fs.ErrNotExist) {
				return nil, instance.Permanent(fmt.Errorf("image %s is not in the store (import it first)", digest))
			}
			return nil, fmt.Errorf("image %s: %w", digest, werr)
		}
		if got := treeDigest(entries); got != digest {
			return nil, fmt.Errorf("stored image %s is corrupted (its tree now has digest %s); import the bundle again", digest, got)
		}
		man, merr := loadManifest(dir, filepath.Join(dir, manifestFile), entries)
		if merr != nil {
			return nil, merr
		}
		rec = &imageRecord{Digest: digest, Manifest: man, Entries: entries}
		if err := p.writeImageRecord(digest, man, entries); err != nil {
			p.log.Warn("write image record failed", zap.String("image", digest), zap.Error(err))
		}
	}
	p.mu.Lock()
	p.records[digest] = rec
	p.mu.Unlock()
	return rec, nil
}

func (p *Provider) loadImageRecord(digest string) (*imageRecord, error) {
	b, err := os.ReadFile(p.recordPath(digest))
	if err != nil {
		return nil, err
	}
	var rec imageRecord
	if err := json.Unmarshal(b, &rec); err != nil {
		return nil, err
	}
	if rec.Digest != digest || treeDigest(rec.Entries) != digest {
		return nil, errors.New("record does not match its digest")
	}
	return &rec, nil
}
