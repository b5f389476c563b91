package docker

import (
	"context"

	"github.com/immutd/immutd/internal/reconcile"
)

// The provider offers everything the executor asks of a driver, and the
// event stream capability.
var (
	_ reconcile.Provider       = (*Provider)(nil)
	_ reconcile.DriftInspector = (*Provider)(nil)
	_ reconcile.ImageResolver  = (*Provider)(nil)
	_ interface {
		Watch(ctx context.Context, notify func())
	} = (*Provider)(nil)
)
