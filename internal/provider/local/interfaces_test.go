package local

import (
	"github.com/immutd/immutd/internal/leader"
	"github.com/immutd/immutd/internal/reconcile"
)

// The provider offers everything the executor asks of a driver, and the
// capabilities the leader uses. It is no RefChecker: checking whether a
// bundle changed would hash it again.
var (
	_ reconcile.Provider      = (*Provider)(nil)
	_ leader.DriftInspector   = (*Provider)(nil)
	_ leader.ImageResolver    = (*Provider)(nil)
	_ leader.PlacementChecker = (*Provider)(nil)
	_ leader.EventSource      = (*Provider)(nil)
)
