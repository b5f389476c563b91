package qemu

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/immutd/immutd/internal/instance"
)

// The leader makes every provider call, so in a cluster the qemu provider
// works only when every agent can reach the VMs: all agents on one host,
// sharing the provider directory. Each agent registers in <dir>/agents,
// and the leader checks that every server did (as for the local provider).

// Register records the agent with node id nodeID (named name) as a user
// of this provider's directory.
func (p *Provider) Register(nodeID, name string) error {
	if err := instance.CheckID(nodeID); err != nil {
		return fmt.Errorf("qemu: register agent: %w", err)
	}
	dir := filepath.Join(p.dir, "agents")
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return fmt.Errorf("qemu: register agent: %w", err)
	}
	tmp := filepath.Join(dir, "."+nodeID+".tmp")
	if err := os.WriteFile(tmp, []byte(name+"\n"), 0o640); err != nil {
		return fmt.Errorf("qemu: register agent: %w", err)
	}
	return os.Rename(tmp, filepath.Join(dir, nodeID))
}

// CheckServers says whether every server of the cluster (by node id) has
// registered with this directory; a single server always has.
func (p *Provider) CheckServers(ids []string) error {
	if len(ids) <= 1 {
		return nil
	}
	var missing []string
	for _, id := range ids {
		if _, err := os.Stat(filepath.Join(p.dir, "agents", id)); instance.CheckID(id) != nil || err != nil {
			missing = append(missing, id)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("the qemu provider directory %s is not shared by the agents with node ids %s: the leader runs every VM, so in a cluster the qemu provider works only when all agents share one host and one directory",
			p.dir, strings.Join(missing, ", "))
	}
	return nil
}
