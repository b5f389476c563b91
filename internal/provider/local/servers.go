package local

import (
	"fmt"

	"github.com/immutd/immutd/internal/provider/hostdir"
)

// In a cluster of several agents the local provider works only when every
// agent shares its directory (all agents on one host): see hostdir.

// Register records the agent with node id nodeID (named name) as a user
// of this provider's directory.
func (p *Provider) Register(nodeID, name string) error {
	if err := hostdir.Register(p.dir, nodeID, name); err != nil {
		return fmt.Errorf("local: %w", err)
	}
	return nil
}

// CheckServers says whether every server of the cluster (by node id) has
// registered with this directory; a single server always has.
func (p *Provider) CheckServers(ids []string) error {
	return hostdir.CheckServers("local", p.dir, ids)
}
