package leader

import (
	"context"

	"github.com/immutd/immutd/internal/instance"
)

// Optional provider capabilities the term uses when a provider has them,
// found by type assertion: no part of the term knows a provider by name.

// DriftInspector inspects a running instance for in-place changes.
type DriftInspector interface {
	Inspect(ctx context.Context, obs instance.Observed, ignore []string) (*instance.Finding, error)
}

// ImageResolver pins an image reference to a digest when desired state
// is committed.
type ImageResolver interface {
	Resolve(ctx context.Context, ref string) (string, error)
}

// RefChecker resolves an image reference again without pinning it, to
// tell whether it now names other content (a docker tag that moved). A
// provider whose references are expensive to check (a local bundle would
// be hashed again) does not offer it.
type RefChecker interface {
	CheckRef(ctx context.Context, ref string) (string, error)
}

// EventSource pushes events (a container died) so that a pass runs at
// once; the periodic pass remains the source of truth.
type EventSource interface {
	Watch(ctx context.Context, notify func())
}

// PlacementChecker says whether the provider can serve this cluster: the
// local provider works only when every server shares its directory (one
// host). ids are the ids of the cluster's servers.
type PlacementChecker interface {
	CheckServers(ids []string) error
}
