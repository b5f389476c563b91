// Package traffic owns the contract between immutd's executor and the
// places traffic to an instance is switched: load balancers (HAProxy over
// its Runtime API), service catalogs (Consul) and target files. The
// executor admits an instance to traffic only once it is healthy and the
// backend confirms it, and drains it from every backend before it is
// terminated. Each backend lives in its own package below this one and
// implements Backend; this package holds only the contract.
package traffic

import (
	"context"
	"errors"
)

// Member is one instance as a traffic backend sees it.
type Member struct {
	Fleet      string
	InstanceID string
	// Address is where the instance serves, host:port.
	Address string
	// ImageDigest and Version describe what it runs (labels, tags, meta).
	ImageDigest string
	Version     string
	// Healthy is immutd's quorum verdict for the instance. Backends that
	// carry a health signal (Consul's TTL check) follow it; others ignore it.
	Healthy bool
	// Canary: a canary of a canary rollout not promoted yet. Backends
	// that carry tags or labels mark it (Consul: tag "canary"; file_sd:
	// label canary="true"); the mark goes with the promotion.
	Canary bool
}

// Backend is one load balancer, catalog or file that traffic to a fleet's
// instances goes through. Every method is idempotent and bounded by its
// context; an error means "not confirmed" and the caller retries. A
// Backend is used by one goroutine at a time per member, but calls for
// different members may run concurrently.
type Backend interface {
	// Name identifies the backend in status, events, logs and metrics,
	// e.g. `haproxy "web"`. Stable for a given configuration.
	Name() string

	// Admit puts m into traffic and returns nil only once the backend,
	// read back, shows m taking traffic (HAProxy: server ready; Consul:
	// in health/service?passing; file: written). Admitting a member that
	// is already in is success.
	Admit(ctx context.Context, m Member) error

	// Drain stops new traffic to m and returns nil only once the backend,
	// read back, shows m getting no new traffic (HAProxy: state drain;
	// Consul: gone from the passing set; file: rewritten without it).
	// Draining a member that is not there is success. Existing
	// connections may continue.
	Drain(ctx context.Context, m Member) error

	// Connections is how many connections m still has at the backend.
	// known is false when the backend cannot tell (Consul, file): the
	// executor then waits the full drain_delay.
	Connections(ctx context.Context, m Member) (n int, known bool, err error)

	// Remove deletes whatever is left of m at the backend, after Drain and
	// the wait for connections (HAProxy: maint, then del server). Removing
	// a member that is not there is success.
	Remove(ctx context.Context, m Member) error

	// Sync is the level-based reconciliation of one pass: every member of
	// admitted is in traffic (re-created if, say, a reload lost it; with
	// Healthy driving a health signal where the backend has one), and every
	// entry this backend owns whose instance id keep does not know is
	// removed (a backend may hold back a grace period before deleting
	// entries it has never seen admitted). Members that keep knows but
	// that are not in admitted are left as they are: they are being
	// admitted or drained by the executor.
	Sync(ctx context.Context, admitted []Member, keep func(instanceID string) bool) error

	// Close releases connections and files.
	Close() error
}

// ErrUnreachable wraps errors of a backend that could not be reached at
// all (socket missing, connection refused, timeout), as opposed to one
// that answered with a refusal. Status shows it as a blocked backend.
var ErrUnreachable = errors.New("traffic backend unreachable")
