package docker

import (
	"github.com/immutd/immutd/internal/leader"
	"github.com/immutd/immutd/internal/reconcile"
)

// The provider offers everything the executor asks of a driver, and the
// capabilities the leader uses.
var (
	_ reconcile.Provider    = (*Provider)(nil)
	_ leader.DriftInspector = (*Provider)(nil)
	_ leader.ImageResolver  = (*Provider)(nil)
	_ leader.RefChecker     = (*Provider)(nil)
	_ leader.EventSource    = (*Provider)(nil)
)
