package docker

import (
	"context"
	"fmt"
	"sort"
	"strings"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"

	"github.com/immutd/immutd/internal/instance"
	"github.com/immutd/immutd/internal/pathmatch"
)

// Inspect asks the engine which files of the instance's container differ
// from its image (the container's writable layer, as `docker diff`
// shows it) and returns nil when none do, or a finding of kind
// instance.DriftMutated whose evidence lists, in path order, items like
// "added /etc/x", "modified /config/app.conf" and "removed /bin/y", at
// most 20 of them and then "... and N more".
//
// A directory that is only listed as changed because something beneath
// it changed is left out. ignore holds pathmatch patterns relative to the
// container's root ("tmp/**"); they are matched against each path
// without its leading "/", and a matching directory covers everything
// below it. Changes in volumes and bind mounts are not part of the
// container's layer and are never seen.
//
// The container is obs.ProviderRef when set, else "immutd-<obs.ID>". A
// container that is gone is an error that is ErrNotFound.
func (p *Provider) Inspect(ctx context.Context, obs instance.Observed, ignore []string) (*instance.Finding, error) {
	f, err := p.inspect(ctx, obs, ignore)
	if err != nil {
		return nil, fmt.Errorf("docker: inspect %s: %w", obs.ID, err)
	}
	return f, nil
}

func (p *Provider) inspect(ctx context.Context, obs instance.Observed, ignore []string) (*instance.Finding, error) {
	ign, err := pathmatch.Compile(ignore)
	if err != nil {
		return nil, err
	}
	ref := obs.ProviderRef
	if ref == "" {
		if err := instance.CheckID(obs.ID); err != nil {
			return nil, err
		}
		ref = containerName(obs.ID)
	}
	changes, err := p.cli.ContainerDiff(ctx, ref)
	if err != nil {
		if cerrdefs.IsNotFound(err) {
			return nil, fmt.Errorf("%s: %w", ref, ErrNotFound)
		}
		return nil, fmt.Errorf("diff %s: %w", ref, err)
	}
	evidence := changeEvidence(changes, ign)
	if len(evidence) == 0 {
		return nil, nil
	}
	return &instance.Finding{Kind: instance.DriftMutated, Evidence: evidence}, nil
}

// changeEvidence turns the engine's change list into evidence items:
// directories marked modified only because of changes beneath them are
// dropped, ignored paths are dropped, the rest is sorted by path and
// capped at instance.MaxEvidence items.
func changeEvidence(changes []container.FilesystemChange, ign *pathmatch.Set) []string {
	// Every proper parent directory of a changed path.
	parents := map[string]bool{}
	for _, c := range changes {
		p := c.Path
		for {
			i := strings.LastIndexByte(p, '/')
			if i <= 0 {
				break
			}
			p = p[:i]
			if parents[p] {
				break
			}
			parents[p] = true
		}
	}
	type item struct{ path, text string }
	var items []item
	for _, c := range changes {
		if c.Kind == container.ChangeModify && parents[c.Path] {
			continue
		}
		rel := strings.TrimPrefix(c.Path, "/")
		if rel == "" || ign.Match(rel) {
			continue
		}
		items = append(items, item{c.Path, changeVerb(c.Kind) + " " + c.Path})
	}
	sort.SliceStable(items, func(i, j int) bool { return items[i].path < items[j].path })
	out := make([]string, 0, len(items))
	for _, it := range items {
		out = append(out, it.text)
	}
	return instance.CapEvidence(out)
}

func changeVerb(k container.ChangeType) string {
	switch k {
	case container.ChangeAdd:
		return "added"
	case container.ChangeDelete:
		return "removed"
	case container.ChangeModify:
		return "modified"
	}
	return fmt.Sprintf("changed (kind %d)", k)
}
