package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/immutd/immutd/internal/backup"
	"github.com/immutd/immutd/internal/cluster"
	"github.com/immutd/immutd/internal/config"
)

// `immutd snapshot save FILE` fetches a snapshot file of the replicated
// state from the leader (GET /v1/snapshot, with the token) and writes it
// with mode 0600, atomically, after verifying it. `immutd snapshot
// restore FILE` is offline: it writes a verified file into the data
// directory of the stopped agent named by -config (cluster.RestoreOffline).

// snapshotTimeout bounds a save.
const snapshotTimeout = 10 * time.Minute

var (
	snapshotSaveCommand = &command{
		name: "snapshot save", args: "FILE", minArgs: 1, maxArgs: 1,
		summary: "save a snapshot of the replicated state, taken on the leader, to FILE (needs the token)",
		about: `Save a consistent snapshot of the replicated state (desired fleets, instance
records, open intents, versions and rollouts, pauses, the event log) to
FILE. The leader takes it after a raft barrier and checks its leadership;
any agent may be asked. FILE holds the whole state: it is written with
mode 0600, atomically, and never over an existing file unless -force. It
carries a header (format, immutd version, raft index and term, time, and
the SHA-256 of the state) that immutd snapshot restore checks.`,
		setup: setupSnapshotSave,
	}
	snapshotRestoreCommand = &command{
		name: "snapshot restore", args: "FILE", minArgs: 1, maxArgs: 1,
		summary: "restore a stopped agent's data directory from a snapshot FILE (offline)",
		about: `Restore the raft state of the stopped agent configured by -config from
FILE, a file of immutd snapshot save. The file is verified whole before
anything is written. The agent, once started, leads a one-agent cluster
holding the restored state and takes the instances that run as they are;
in a cluster, restore one agent, start it, then start the others with
their data_dir/raft removed: they join it. Refused while the agent runs,
when data_dir/raft holds state (unless -force, which moves it aside), and
while another agent of the cluster (cluster.join) answers on its cluster
port (unless -ignore-peers).`,
		setup: setupSnapshotRestore,
	}
)

func setupSnapshotSave(flags *flag.FlagSet) runFunc {
	cf := addClientFlags(flags)
	force := flags.Bool("force", false, "replace FILE if it exists")
	return func(ctx context.Context, w streams, args []string) error {
		path := args[0]
		if !*force {
			if _, err := os.Lstat(path); err == nil {
				return fmt.Errorf("%s exists: pass -force to replace it", path)
			} else if !errors.Is(err, fs.ErrNotExist) {
				return err
			}
		}
		r, err := cf.connect()
		if err != nil {
			return err
		}
		ctx, cancel := context.WithTimeout(ctx, snapshotTimeout)
		defer cancel()
		snap, size, err := saveSnapshot(ctx, r, path, *force)
		if err != nil {
			return err
		}
		h := snap.Header
		fmt.Fprintf(w.out, "snapshot saved to %s (%d bytes, mode 0600, sha256 %s)\n", clean(path), size, clean(h.SHA256))
		fmt.Fprintf(w.out, "taken on %s at %s: raft index %d, term %d, immutd %s\n", clean(h.Node), h.CreatedAt.Format(time.RFC3339), h.Index, h.Term, clean(h.ImmutdVersion))
		fmt.Fprintf(w.out, "%s\nIt holds the whole replicated state: keep it as secret as the API token.\n", summarize(snap))
		return nil
	}
}

// saveSnapshot fetches the snapshot into a temporary file beside path,
// verifies it, and renames it into place (without replacing a file that
// appeared meanwhile, unless force).
func saveSnapshot(ctx context.Context, r *remote, path string, force bool) (*backup.Snapshot, int64, error) {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	tmp, err := os.CreateTemp(dir, "."+base+".tmp-*")
	if err != nil {
		return nil, 0, err
	}
	done := false
	defer func() {
		if !done {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if err := tmp.Chmod(0o600); err != nil {
		return nil, 0, err
	}
	n, err := r.Snapshot(ctx, tmp)
	if err != nil {
		return nil, 0, r.explain(err)
	}
	if _, err := tmp.Seek(0, io.SeekStart); err != nil {
		return nil, 0, err
	}
	snap, err := backup.Read(io.LimitReader(tmp, int64(backup.MaxFileSize)+1))
	if err != nil {
		return nil, 0, fmt.Errorf("the agent at %s sent a snapshot that does not verify; nothing was saved: %w", r.addr, err)
	}
	if err := tmp.Sync(); err != nil {
		return nil, 0, err
	}
	if err := tmp.Close(); err != nil {
		return nil, 0, err
	}
	if force {
		err = os.Rename(tmp.Name(), path)
	} else if err = os.Link(tmp.Name(), path); err == nil {
		os.Remove(tmp.Name())
	} else if errors.Is(err, fs.ErrExist) {
		err = fmt.Errorf("%s appeared while the snapshot was taken: pass -force to replace it", path)
	}
	if err != nil {
		os.Remove(tmp.Name())
		done = true
		return nil, 0, err
	}
	done = true
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return snap, n, nil
}

// summarize is one line about a snapshot's state.
func summarize(s *backup.Snapshot) string {
	st := s.State
	var names []string
	for name := range st.Fleets {
		names = append(names, clean(name))
	}
	slices.Sort(names)
	fleets := strings.Join(names, ", ")
	if fleets == "" {
		fleets = "none"
	}
	return fmt.Sprintf("desired generation %d; fleets: %s; %d instance records, %d open intents, %d events",
		st.Generation, fleets, len(st.Instances), len(st.Intents), len(st.Events))
}

func setupSnapshotRestore(flags *flag.FlagSet) runFunc {
	cfgPath := flags.String("config", "/etc/immutd/agent.hcl", "agent configuration file: its data_dir is restored, its cluster address is the restored cluster's")
	force := flags.Bool("force", false, "move raft state found in data_dir aside (to data_dir/raft.before-restore-TIME) instead of refusing")
	ignorePeers := flags.Bool("ignore-peers", false, "do not refuse when an agent named in cluster.join answers on its cluster port")
	return func(ctx context.Context, w streams, args []string) error {
		cfg, err := config.LoadAgent(*cfgPath)
		if err != nil {
			return configError(w.err, err)
		}
		snap, err := backup.ReadFile(args[0])
		if err != nil {
			return fmt.Errorf("nothing was restored: %w", err)
		}
		c := cfg.Cluster
		if c.Multi() && !*ignorePeers {
			if err := peersDown(c); err != nil {
				return fmt.Errorf("nothing was restored: %w", err)
			}
		}
		adv, err := net.ResolveTCPAddr("tcp", c.AdvertiseAddr)
		if err != nil {
			return fmt.Errorf("cluster address %q: %w", c.AdvertiseAddr, err)
		}
		h := snap.Header
		res, err := cluster.RestoreOffline(cluster.RestoreConfig{DataDir: cfg.DataDir, Advertise: adv.String(), Body: snap.Body,
			Index: h.Index, Term: h.Term, Replace: *force})
		if err != nil {
			if errors.Is(err, cluster.ErrHasState) {
				return fmt.Errorf("nothing was restored: %s holds raft state: %w", clean(cfg.DataDir), err)
			}
			return fmt.Errorf("nothing was restored: %w", err)
		}
		fmt.Fprintf(w.out, "restored %s into %s (node id %s, cluster address %s)\n", clean(args[0]), clean(cfg.DataDir), res.NodeID, adv)
		fmt.Fprintf(w.out, "snapshot taken on %s at %s: raft index %d, term %d, immutd %s\n%s\n", clean(h.Node), h.CreatedAt.Format(time.RFC3339),
			h.Index, h.Term, clean(h.ImmutdVersion), summarize(snap))
		if res.MovedAside != "" {
			fmt.Fprintf(w.out, "the raft state that was there is in %s\n", clean(res.MovedAside))
		}
		fmt.Fprintln(w.out, "next: start this agent; it leads with the restored state and takes the running instances as they are.")
		if c.Multi() {
			fmt.Fprintln(w.out, "then start the other agents of the cluster, each with its data_dir/raft moved away: they join this one.")
		}
		return nil
	}
}

// peersDown refuses a restore while an agent named in cluster.join (other
// than this one) accepts connections on its cluster port: a restored
// agent next to a running cluster would be a second cluster acting on
// the same instances.
func peersDown(c config.ClusterConfig) error {
	own := map[string]bool{}
	for _, a := range []string{c.BindAddr, c.AdvertiseAddr} {
		own[a] = true
		if ta, err := net.ResolveTCPAddr("tcp", a); err == nil {
			own[ta.String()] = true
		}
	}
	var (
		mu  sync.Mutex
		up  []string
		wg  sync.WaitGroup
		err error
	)
	for _, addr := range c.Join {
		ta, rerr := net.ResolveTCPAddr("tcp", addr)
		if own[addr] || rerr == nil && own[ta.String()] {
			continue
		}
		wg.Go(func() {
			conn, derr := net.DialTimeout("tcp", addr, 2*time.Second)
			if derr != nil {
				return
			}
			conn.Close()
			mu.Lock()
			up = append(up, addr)
			mu.Unlock()
		})
	}
	wg.Wait()
	if len(up) > 0 {
		slices.Sort(up)
		err = fmt.Errorf("the agents at %s (cluster.join) answer on their cluster port: stop every agent of the cluster and move its data_dir/raft away before a restore (-ignore-peers skips this check)",
			clean(strings.Join(up, ", ")))
	}
	return err
}
