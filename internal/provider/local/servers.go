package local

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/immutd/immutd/internal/instance"
)

// In a cluster of several agents the local provider works only when every
// agent shares its directory (all agents on one host): the leader calls
// it, and the instances must be where every agent can reach them. Each
// agent registers itself in <dir>/agents/<node id>, and the leader checks
// that every server of the cluster did.

// Register records the agent with node id nodeID (named name) as a user
// of this provider's directory.
func (p *Provider) Register(nodeID, name string) error {
	if err := instance.CheckID(nodeID); err != nil {
		return fmt.Errorf("local: register agent: %w", err)
	}
	dir := filepath.Join(p.dir, "agents")
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return fmt.Errorf("local: register agent: %w", err)
	}
	return writeFileAtomic(filepath.Join(dir, nodeID), []byte(name+"\n"))
}

// CheckServers says whether every server of the cluster (by node id) has
// registered with this directory; a single server always has.
func (p *Provider) CheckServers(ids []string) error {
	if len(ids) <= 1 {
		return nil
	}
	var missing []string
	for _, id := range ids {
		if instance.CheckID(id) != nil {
			missing = append(missing, id)
			continue
		}
		if _, err := os.Stat(filepath.Join(p.dir, "agents", id)); err != nil {
			missing = append(missing, id)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("the local provider directory %s is not shared by the agents with node ids %s: the local provider works in a cluster only when all agents share one host and one directory",
			p.dir, strings.Join(missing, ", "))
	}
	return nil
}
