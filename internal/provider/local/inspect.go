package local

import (
	"context"
	"errors"
	"fmt"
	"io/fs"

	"github.com/immutd/immutd/internal/instance"
	"github.com/immutd/immutd/internal/pathmatch"
)

// Inspect compares the instance root with the per-entry manifest of its
// image and returns nil when they match, or a finding of kind
// instance.DriftMutated whose evidence lists, in path order, items like
// "added evil.sh", "removed bin/x", "modified config/app.conf",
// "mode config/app.conf 0644->0755" and "type data file->symlink".
// A root that is no longer a directory is not looked into: the finding
// is "type . dir->symlink" (or "->file", ...).
//
// An instance the provider has no metadata for, also one terminated
// while Inspect looked, is an error wrapping ErrNotFound (and so
// instance.ErrGone).
//
// ignore holds slash-separated glob patterns relative to the root: '*',
// '?' and '[...]' match within one path segment (as path.Match), a "**"
// segment matches any number of segments, and a pattern that matches a
// directory ignores everything below it.
//
// A file is hashed only when its stat (device, inode, size, mtime, ctime,
// mode) differs from when it was last hashed, or when the slow backstop
// says so; the ctime in that key means an edit that keeps a file's size
// and restores its mtime is still found (see driftcache.go). Only the
// files the image has as files are hashed: the content of an added path
// is not part of the finding. Inspections of different instances may run
// in parallel; those of one instance take turns.
func (p *Provider) Inspect(ctx context.Context, obs instance.Observed, ignore []string) (*instance.Finding, error) {
	f, err := p.inspect(ctx, obs, ignore)
	if err != nil {
		return nil, fmt.Errorf("local: inspect %s: %w", obs.ID, err)
	}
	return f, nil
}

func (p *Provider) inspect(ctx context.Context, obs instance.Observed, ignore []string) (*instance.Finding, error) {
	id := obs.ID
	if err := instance.CheckID(id); err != nil {
		return nil, err
	}
	ign, err := pathmatch.Compile(ignore)
	if err != nil {
		return nil, err
	}
	digest := obs.ImageDigest
	m, err := p.readMeta(id)
	switch {
	case err == nil:
		digest = m.ImageDigest
	case errors.Is(err, fs.ErrNotExist):
		return nil, ErrNotFound
	}
	rec, err := p.record(ctx, digest)
	if err != nil {
		return nil, err
	}
	var want []entry
	for _, e := range rec.Entries {
		if !ign.Match(e.Path) {
			want = append(want, e)
		}
	}
	st := &inspectState{want: want, id: id, now: p.now().UnixNano(), rehashAfter: p.rehashAfter, racyWindow: p.racyWindow}
	var ic *instanceCache
	if !p.noCache {
		ic = p.drift.get(id)
		ic.mu.Lock()
		defer ic.mu.Unlock()
		if ic.digest != digest {
			ic.digest, ic.files = digest, nil
		}
		ic.gen++
		st.cache = ic
	}
	got, err := walkTree(ctx, p.instanceRoot(id), walkOptions{skip: ign.Match, inspect: st})
	p.hashedBytes.Add(st.hashed)
	if h := inspectHook.Load(); h != nil {
		(*h)(id)
	}
	if _, merr := p.readMeta(id); errors.Is(merr, fs.ErrNotExist) {
		if ic != nil {
			p.drift.dropIf(id, ic)
		}
		return nil, ErrNotFound // terminated while we looked
	}
	var notDir *notDirError
	if errors.As(err, &notDir) {
		// Replaced by a symlink or a file: that is the whole finding.
		ev := fmt.Sprintf("type . %s->%s", typeDir, notDir.Type)
		return &instance.Finding{Kind: instance.DriftMutated, Evidence: []string{ev}}, nil
	}
	if err != nil {
		return nil, err
	}
	if ic != nil {
		st.prune()
	}
	evidence := diffEntries(want, got)
	if len(evidence) == 0 {
		return nil, nil
	}
	return &instance.Finding{Kind: instance.DriftMutated, Evidence: instance.CapEvidence(evidence)}, nil
}

// diffEntries lists the differences between two path-sorted entry lists,
// one item per path.
func diffEntries(want, got []entry) []string {
	var out []string
	i, j := 0, 0
	for i < len(want) || j < len(got) {
		switch {
		case j == len(got) || (i < len(want) && want[i].Path < got[j].Path):
			out = append(out, "removed "+want[i].Path)
			i++
		case i == len(want) || got[j].Path < want[i].Path:
			out = append(out, "added "+got[j].Path)
			j++
		default:
			if d := diffEntry(want[i], got[j]); d != "" {
				out = append(out, d)
			}
			i++
			j++
		}
	}
	return out
}

func diffEntry(w, g entry) string {
	if w.Type != g.Type {
		return fmt.Sprintf("type %s %s->%s", w.Path, w.Type, g.Type)
	}
	changed := (w.Type == typeFile && w.SHA256 != g.SHA256) ||
		(w.Type == typeSymlink && w.Target != g.Target)
	modeChanged := w.Mode != g.Mode
	switch {
	case changed && modeChanged:
		return fmt.Sprintf("modified %s (mode %04o->%04o)", w.Path, w.Mode, g.Mode)
	case changed:
		return "modified " + w.Path
	case modeChanged:
		return fmt.Sprintf("mode %s %04o->%04o", w.Path, w.Mode, g.Mode)
	}
	return ""
}
