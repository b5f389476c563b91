package qemu

import (
	"fmt"

	"github.com/immutd/immutd/internal/provider/hostdir"
)

// The leader runs every VM, so in a cluster the qemu provider works only
// when all agents share one host and the provider directory: see hostdir.

// Register records the agent with node id nodeID (named name) as a user
// of this provider's directory.
func (p *Provider) Register(nodeID, name string) error {
	if err := hostdir.Register(p.dir, nodeID, name); err != nil {
		return fmt.Errorf("qemu: %w", err)
	}
	return nil
}

// CheckServers says whether every server of the cluster (by node id) has
// registered with this directory; a single server always has.
func (p *Provider) CheckServers(ids []string) error {
	return hostdir.CheckServers("qemu", p.dir, ids)
}
