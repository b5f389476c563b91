// Package hostdir holds what the providers whose state is a directory on
// the agent's host (local, qemu) share: which agents use the directory,
// and removing trees their instances may have made unwritable.
//
// The leader makes every provider call, so such a provider works in a
// cluster only when every agent can reach its instances: all agents on
// one host, sharing the directory. Each agent registers in <dir>/agents,
// and the leader checks that every server did.
package hostdir

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/immutd/immutd/internal/instance"
)

// Register records the agent with node id nodeID (named name) as a user
// of dir, atomically.
func Register(dir, nodeID, name string) error {
	if err := instance.CheckID(nodeID); err != nil {
		return fmt.Errorf("register agent: %w", err)
	}
	agents := filepath.Join(dir, "agents")
	if err := os.MkdirAll(agents, 0o750); err != nil {
		return fmt.Errorf("register agent: %w", err)
	}
	tmp := filepath.Join(agents, "."+nodeID+".tmp")
	if err := os.WriteFile(tmp, []byte(name+"\n"), 0o640); err != nil {
		return fmt.Errorf("register agent: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(agents, nodeID)); err != nil {
		return fmt.Errorf("register agent: %w", err)
	}
	return nil
}

// CheckServers says whether every server of the cluster (by node id) has
// registered with dir, the directory of the named provider; a single
// server always has.
func CheckServers(provider, dir string, ids []string) error {
	if len(ids) <= 1 {
		return nil
	}
	var missing []string
	for _, id := range ids {
		if _, err := os.Stat(filepath.Join(dir, "agents", id)); instance.CheckID(id) != nil || err != nil {
			missing = append(missing, id)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("the %s provider directory %s is not shared by the agents with node ids %s: the leader makes every provider call, so the %s provider works in a cluster only when all agents share one host and one directory",
			provider, dir, strings.Join(missing, ", "), provider)
	}
	return nil
}

// RemoveTree removes a directory tree, also when an instance made parts
// of it unwritable. A missing tree is not an error.
func RemoveTree(root string) error {
	if err := os.RemoveAll(root); err == nil {
		return nil
	}
	_ = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if d != nil && d.IsDir() {
			_ = os.Chmod(p, 0o700)
		}
		return nil
	})
	return os.RemoveAll(root)
}
