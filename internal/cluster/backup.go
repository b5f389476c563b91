package cluster

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"go.uber.org/zap"

	"github.com/immutd/immutd/internal/state"
)

// Backup and restore (`immutd snapshot save|restore`). A backup is the
// FSM's own snapshot encoding of a consistent state, read on the leader;
// a restore is offline: it writes that encoding into an empty data
// directory as a raft snapshot whose configuration is this node alone,
// so that the agent starts the way it restarts after a crash, on its own
// data, and the others join it.

// EncodeState returns the replicated state as the FSM snapshots it
// (state.WriteSnapshot), read on the leader after a barrier, so that it
// holds every entry committed before the call; and the raft position it
// reflects: at least index, taken in term. Leadership is verified with a
// quorum after the state was read. It fails with ErrNotLeader on a
// follower.
func (n *Node) EncodeState(timeout time.Duration) (body []byte, index, term uint64, err error) {
	if !n.IsLeader() {
		return nil, 0, 0, ErrNotLeader
	}
	if err := n.raft.Barrier(timeout).Error(); err != nil {
		return nil, 0, 0, leaderErr("barrier", err)
	}
	// Every entry up to applied is in the state now; entries applied after
	// this read only make the state newer.
	applied := n.raft.AppliedIndex()
	var buf bytes.Buffer
	n.fsm.mu.RLock()
	err = n.fsm.st.WriteSnapshot(&buf)
	index = max(applied, n.fsm.applied)
	n.fsm.mu.RUnlock()
	if err != nil {
		return nil, 0, 0, fmt.Errorf("cluster: encode state: %w", err)
	}
	if err := n.raft.VerifyLeader().Error(); err != nil {
		return nil, 0, 0, leaderErr("verify leadership", err)
	}
	return buf.Bytes(), index, n.raft.CurrentTerm(), nil
}

func leaderErr(what string, err error) error {
	if errors.Is(err, raft.ErrNotLeader) || errors.Is(err, raft.ErrLeadershipLost) {
		return fmt.Errorf("%w (%s: %v)", ErrNotLeader, what, err)
	}
	return fmt.Errorf("cluster: %s: %w", what, err)
}

// RestoreConfig says what RestoreOffline writes where.
type RestoreConfig struct {
	// DataDir is the agent's data directory; the agent must be stopped.
	DataDir string
	// Advertise is the raft address of this agent, as it will advertise
	// it (resolved: "10.0.0.1:7980").
	Advertise string
	// Body is a state as state.WriteSnapshot wrote it; Index and Term
	// are the position it was taken at.
	Body        []byte
	Index, Term uint64
	// Replace moves raft state found in DataDir aside (to
	// raft.before-restore-TIME) instead of refusing.
	Replace bool
	Logger  *zap.Logger
}

// RestoreResult says what RestoreOffline did.
type RestoreResult struct {
	NodeID string
	// Index and Term are the raft snapshot's; the agent's first term
	// after the restore is later than Term.
	Index, Term uint64
	// MovedAside is where the replaced raft state went ("" if none).
	MovedAside string
}

// ErrHasState: the data directory holds raft state and Replace is not set.
var ErrHasState = errors.New("cluster: the data directory holds raft state")

// keyCurrentTerm is where raft keeps its current term in the stable store
// (raft.go: keyCurrentTerm). A test checks that a node opened after a
// restore is in a later term than the snapshot's.
var keyCurrentTerm = []byte("CurrentTerm")

// RestoreOffline writes a snapshot into the data directory of a stopped
// agent: DataDir/raft then holds a raft snapshot of Body at Index, whose
// configuration is this node alone (its node id, at Advertise), and a
// current term of at least Term and of every intent's term in the state,
// so that this node's first term is later than any the state records.
// When the agent starts it leads a one-server cluster with the restored
// state; other agents with no raft state join it.
//
// The state is decoded before anything is written. An existing raft
// directory with state is refused (ErrHasState) unless Replace; one whose
// raft.db another process holds (a running agent) is always refused.
// The new raft directory is built beside the old one and renamed into
// place, so a failure leaves no half-restored state.
func RestoreOffline(cfg RestoreConfig) (RestoreResult, error) {
	var res RestoreResult
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	st, err := state.ReadSnapshot(bytes.NewReader(cfg.Body))
	if err != nil {
		return res, fmt.Errorf("cluster: restore: %w", err)
	}
	if cfg.Advertise == "" {
		return res, errors.New("cluster: restore: no raft address")
	}
	term := cfg.Term
	for _, it := range st.Intents {
		term = max(term, it.Term)
	}
	res.Index, res.Term = max(cfg.Index, 1), max(term, 1)

	dir := filepath.Join(cfg.DataDir, "raft")
	if err := os.MkdirAll(cfg.DataDir, 0o750); err != nil {
		return res, fmt.Errorf("cluster: create data dir %s: %w", cfg.DataDir, err)
	}
	if _, err := os.Lstat(dir); err == nil {
		moved, err := clearRaftDir(dir, cfg.Replace, cfg.Logger)
		if err != nil {
			return res, err
		}
		res.MovedAside = moved
	} else if !errors.Is(err, fs.ErrNotExist) {
		return res, fmt.Errorf("cluster: restore: %w", err)
	}
	id, err := nodeID(cfg.DataDir)
	if err != nil {
		return res, err
	}
	res.NodeID = id

	var rnd [6]byte
	_, _ = rand.Read(rnd[:])
	tmp := filepath.Join(cfg.DataDir, ".raft-restore-"+hex.EncodeToString(rnd[:]))
	if err := os.Mkdir(tmp, 0o750); err != nil {
		return res, fmt.Errorf("cluster: restore: %w", err)
	}
	if err := writeRestored(tmp, id, cfg.Advertise, cfg.Body, res.Index, res.Term, cfg.Logger); err != nil {
		os.RemoveAll(tmp)
		return res, err
	}
	if err := os.Rename(tmp, dir); err != nil {
		os.RemoveAll(tmp)
		return res, fmt.Errorf("cluster: restore: %w", err)
	}
	if err := syncDir(cfg.DataDir); err != nil {
		return res, fmt.Errorf("cluster: restore: %w", err)
	}
	if err := chownLikeParent(cfg.DataDir, dir, filepath.Join(cfg.DataDir, "node-id")); err != nil {
		return res, fmt.Errorf("cluster: restore: %w", err)
	}
	return res, nil
}

// clearRaftDir makes way for a restored raft directory: it refuses while
// another process holds raft.db, removes a directory without raft state,
// and moves one with state aside when replace is set. It returns where
// the state went.
func clearRaftDir(dir string, replace bool, log *zap.Logger) (string, error) {
	if err := checkUnlocked(filepath.Join(dir, "raft.db")); err != nil {
		return "", err
	}
	has, desc, err := inspectRaftDir(dir, log)
	if err != nil {
		return "", err
	}
	if !has {
		// Nothing raft would read: an agent that started and stopped
		// before it joined or bootstrapped a cluster.
		if err := os.RemoveAll(dir); err != nil {
			return "", fmt.Errorf("cluster: restore: remove empty %s: %w", dir, err)
		}
		return "", nil
	}
	aside := dir + ".before-restore-" + time.Now().UTC().Format("20060102T150405Z")
	if !replace {
		return "", fmt.Errorf("%w (%s): %s; to restore over it, stop the agent and move it away (mv %s %s), or pass -force to have it moved there",
			ErrHasState, desc, dir, dir, aside)
	}
	if err := os.Rename(dir, aside); err != nil {
		return "", fmt.Errorf("cluster: restore: move %s aside: %w", dir, err)
	}
	return aside, nil
}

// checkUnlocked refuses a raft.db that another process (a running agent)
// has open: bolt holds an exclusive flock on it while it is open.
func checkUnlocked(db string) error {
	f, err := os.OpenFile(db, os.O_RDWR, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("cluster: restore: %w", err)
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return fmt.Errorf("cluster: restore: %s is in use: an agent is running on this data directory; stop it first", db)
		}
		return fmt.Errorf("cluster: restore: lock %s: %w", db, err)
	}
	return syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
}

// inspectRaftDir says whether dir holds raft state, and describes it.
func inspectRaftDir(dir string, log *zap.Logger) (bool, string, error) {
	store, err := raftboltdb.New(raftboltdb.Options{Path: filepath.Join(dir, "raft.db"), MsgpackUseNewTimeFormat: true})
	if err != nil {
		return false, "", fmt.Errorf("cluster: restore: open %s: %w", filepath.Join(dir, "raft.db"), err)
	}
	defer store.Close()
	snaps, err := raft.NewFileSnapshotStoreWithLogger(dir, 2, HCLogger(log.Named("snapshots")))
	if err != nil {
		return false, "", fmt.Errorf("cluster: restore: %w", err)
	}
	has, err := raft.HasExistingState(store, store, snaps)
	if err != nil {
		return false, "", fmt.Errorf("cluster: restore: inspect %s: %w", dir, err)
	}
	term, _ := store.GetUint64(keyCurrentTerm)
	last, _ := store.LastIndex()
	metas, _ := snaps.List()
	return has, fmt.Sprintf("term %d, last log index %d, %d snapshots", term, last, len(metas)), nil
}

// writeRestored writes a raft directory into dir: a stable store whose
// current term is term, and one snapshot of body at index, term with a
// configuration of this node alone.
func writeRestored(dir, id, addr string, body []byte, index, term uint64, log *zap.Logger) error {
	store, err := raftboltdb.New(raftboltdb.Options{Path: filepath.Join(dir, "raft.db"), MsgpackUseNewTimeFormat: true})
	if err != nil {
		return fmt.Errorf("cluster: restore: open raft log: %w", err)
	}
	defer store.Close()
	if err := store.SetUint64(keyCurrentTerm, term); err != nil {
		return fmt.Errorf("cluster: restore: set term: %w", err)
	}
	snaps, err := raft.NewFileSnapshotStoreWithLogger(dir, 2, HCLogger(log.Named("snapshots")))
	if err != nil {
		return fmt.Errorf("cluster: restore: %w", err)
	}
	// The transport only encodes the peer list of old snapshot versions.
	_, trans := raft.NewInmemTransport(raft.ServerAddress(addr))
	defer trans.Close()
	conf := raft.Configuration{Servers: []raft.Server{{Suffrage: raft.Voter, ID: raft.ServerID(id), Address: raft.ServerAddress(addr)}}}
	sink, err := snaps.Create(raft.SnapshotVersionMax, index, term, conf, index, trans)
	if err != nil {
		return fmt.Errorf("cluster: restore: create snapshot: %w", err)
	}
	if _, err := sink.Write(body); err != nil {
		_ = sink.Cancel()
		return fmt.Errorf("cluster: restore: write snapshot: %w", err)
	}
	if err := sink.Close(); err != nil {
		return fmt.Errorf("cluster: restore: write snapshot: %w", err)
	}
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// chownLikeParent gives the paths (recursively) the owner of parent when
// root runs the restore for a data directory another user owns (the
// immutd service user), so that the agent can open what was written.
func chownLikeParent(parent string, paths ...string) error {
	if os.Geteuid() != 0 {
		return nil
	}
	fi, err := os.Stat(parent)
	if err != nil {
		return err
	}
	sys, ok := fi.Sys().(*syscall.Stat_t)
	if !ok || sys.Uid == 0 {
		return nil
	}
	uid, gid := int(sys.Uid), int(sys.Gid)
	for _, p := range paths {
		err := filepath.WalkDir(p, func(path string, _ fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			return os.Lchown(path, uid, gid)
		})
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	return nil
}
