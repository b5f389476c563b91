// Package cluster owns consensus: the raft node (hashicorp/raft with a
// raft-boltdb/v2 log store and file snapshots in the data directory), the
// FSM that applies state commands, the persisted node identity, and
// leadership notifications. It replicates; it does not decide.
package cluster

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"go.uber.org/zap"

	"github.com/immutd/immutd/internal/state"
)

// Errors callers branch on.
var (
	// ErrNotLeader: this node cannot apply; forward to the leader.
	ErrNotLeader = errors.New("cluster: not the leader")
	// ErrMaybeApplied: leadership was lost while the entry was in flight;
	// it may or may not be committed. Retries must be idempotent.
	ErrMaybeApplied = errors.New("cluster: leadership lost, the entry may have been applied")
)

// MaxEntrySize bounds one raft log entry. The largest entry immutd
// writes is a desired state of config.MaxFleets fleets, far below it; a
// bigger one is a bug or an attack and is refused before it reaches the
// log.
const MaxEntrySize = 8 << 20

// Timing is raft's timing, derived from one knob.
type Timing struct {
	Heartbeat   time.Duration
	Election    time.Duration
	LeaderLease time.Duration
	Commit      time.Duration
}

// DefaultTiming is tuned for a LAN: a follower notices a dead leader
// after 200-400ms. See the README for the trade-off.
func DefaultTiming() Timing { return ScaledTiming(1) }

// ScaledTiming is the one timing knob (cluster.raft_multiplier): at 1 the
// heartbeat and election timeouts are 200ms, the leader lease 100ms and
// the commit timeout 25ms (a fifth of raft's own defaults); m scales all
// four. Use 2-5 on a congested network or slow disks.
func ScaledTiming(m float64) Timing {
	d := func(x time.Duration) time.Duration { return time.Duration(float64(x) * m) }
	return Timing{Heartbeat: d(200 * time.Millisecond), Election: d(200 * time.Millisecond), LeaderLease: d(100 * time.Millisecond), Commit: d(25 * time.Millisecond)}
}

// Config configures a node.
type Config struct {
	// DataDir holds node-id, raft/raft.db and raft/snapshots.
	DataDir   string
	BindAddr  string
	Advertise string
	// Layer carries raft traffic; nil means plain TCP on BindAddr.
	Layer raft.StreamLayer
	// Bootstrap forms a single-node cluster when there is no raft state.
	Bootstrap bool
	Timing    Timing
	Logger    *zap.Logger
	// TrailingLogs and SnapshotThreshold override raft's defaults (10240
	// and 8192 entries) when set; tests use small values.
	TrailingLogs      uint64
	SnapshotThreshold uint64
}

// Node is one raft member.
type Node struct {
	id     string
	log    *zap.Logger
	raft   *raft.Raft
	fsm    *fsm
	store  *raftboltdb.BoltStore
	trans  *raft.NetworkTransport
	notify chan bool
	// hadState: the node found raft state on disk when it opened.
	hadState bool
	conf     *raft.Config
	logs     raft.LogStore
	snaps    raft.SnapshotStore
}

// Open starts the raft node.
func Open(cfg Config) (*Node, error) {
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	if cfg.Timing == (Timing{}) {
		cfg.Timing = DefaultTiming()
	}
	id, err := nodeID(cfg.DataDir)
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(cfg.DataDir, "raft")
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("cluster: create %s: %w", dir, err)
	}
	log := cfg.Logger
	n := &Node{id: id, log: log, fsm: newFSM(log), notify: make(chan bool, 16)}

	store, err := raftboltdb.New(raftboltdb.Options{Path: filepath.Join(dir, "raft.db"), MsgpackUseNewTimeFormat: true})
	if err != nil {
		return nil, fmt.Errorf("cluster: open raft log %s: %w", filepath.Join(dir, "raft.db"), err)
	}
	n.store = store
	snaps, err := raft.NewFileSnapshotStoreWithLogger(dir, 2, HCLogger(log.Named("snapshots")))
	if err != nil {
		store.Close()
		return nil, fmt.Errorf("cluster: open snapshot store: %w", err)
	}
	layer := cfg.Layer
	if layer == nil {
		advertise := cfg.Advertise
		if advertise == "" {
			advertise = cfg.BindAddr
		}
		addr, err := net.ResolveTCPAddr("tcp", advertise)
		if err != nil {
			store.Close()
			return nil, fmt.Errorf("cluster: advertise address %q: %w", advertise, err)
		}
		ln, err := net.Listen("tcp", cfg.BindAddr)
		if err != nil {
			store.Close()
			return nil, fmt.Errorf("cluster: raft listen on %s: %w", cfg.BindAddr, err)
		}
		layer = &tcpLayer{Listener: ln, advertise: addr}
	}
	n.trans = raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		Stream:                  layer,
		MaxPool:                 3,
		Timeout:                 10 * time.Second,
		Logger:                  HCLogger(log.Named("transport")),
		MsgpackUseNewTimeFormat: true,
	})

	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(id)
	rc.HeartbeatTimeout = cfg.Timing.Heartbeat
	rc.ElectionTimeout = cfg.Timing.Election
	rc.LeaderLeaseTimeout = cfg.Timing.LeaderLease
	rc.CommitTimeout = cfg.Timing.Commit
	rc.NotifyCh = n.notify
	rc.Logger = HCLogger(log)
	rc.NoLegacyTelemetry = true
	rc.BatchApplyCh = true
	rc.ShutdownOnRemove = false
	if cfg.TrailingLogs > 0 {
		rc.TrailingLogs = cfg.TrailingLogs
	}
	if cfg.SnapshotThreshold > 0 {
		rc.SnapshotThreshold = cfg.SnapshotThreshold
	}

	logs := raft.LogStore(store)
	if cache, err := raft.NewLogCache(512, store); err == nil {
		logs = cache
	}
	has, err := raft.HasExistingState(logs, store, snaps)
	if err != nil {
		n.closeStores()
		return nil, fmt.Errorf("cluster: inspect raft state: %w", err)
	}
	n.hadState = has
	n.conf, n.logs, n.snaps = rc, logs, snaps
	if cfg.Bootstrap {
		if !has {
			conf := raft.Configuration{Servers: []raft.Server{{ID: rc.LocalID, Address: n.trans.LocalAddr()}}}
			if err := raft.BootstrapCluster(rc, logs, store, snaps, n.trans, conf); err != nil {
				n.closeStores()
				return nil, fmt.Errorf("cluster: bootstrap: %w", err)
			}
			log.Info("bootstrapped single-node cluster", zap.String("node_id", id))
		}
	}
	r, err := raft.NewRaft(rc, n.fsm, logs, store, snaps, n.trans)
	if err != nil {
		n.closeStores()
		return nil, fmt.Errorf("cluster: start raft: %w", err)
	}
	n.raft = r
	return n, nil
}

func (n *Node) closeStores() {
	if n.trans != nil {
		n.trans.Close()
	}
	n.store.Close()
}

// ID is the node's persisted identity.
func (n *Node) ID() string { return n.id }

// Apply commits a command and returns the state's answer. It fails with
// ErrNotLeader on a follower and ErrMaybeApplied when leadership was lost
// in flight.
func (n *Node) Apply(ctx context.Context, c state.Command) (state.Result, error) {
	b, err := state.Encode(c)
	if err != nil {
		return state.Result{}, err
	}
	if len(b) > MaxEntrySize {
		return state.Result{}, fmt.Errorf("cluster: apply %T: entry of %d bytes exceeds the limit of %d", c, len(b), MaxEntrySize)
	}
	timeout := 10 * time.Second
	if dl, ok := ctx.Deadline(); ok {
		timeout = time.Until(dl)
		if timeout <= 0 {
			return state.Result{}, ctx.Err()
		}
	}
	f := n.raft.Apply(b, timeout)
	if err := f.Error(); err != nil {
		switch {
		case errors.Is(err, raft.ErrNotLeader):
			return state.Result{}, ErrNotLeader
		case errors.Is(err, raft.ErrLeadershipLost), errors.Is(err, raft.ErrLeadershipTransferInProgress):
			return state.Result{}, fmt.Errorf("%w: %v", ErrMaybeApplied, err)
		}
		return state.Result{}, fmt.Errorf("cluster: apply: %w", err)
	}
	res, _ := f.Response().(state.Result)
	return res, nil
}

// Read runs fn with the local state under a read lock. fn must not keep
// references into the state after it returns, nor block.
func (n *Node) Read(fn func(st *state.State)) {
	n.fsm.mu.RLock()
	defer n.fsm.mu.RUnlock()
	fn(n.fsm.st)
}

// AppliedIndex is the index of the last entry applied to the local state.
func (n *Node) AppliedIndex() uint64 {
	n.fsm.mu.RLock()
	defer n.fsm.mu.RUnlock()
	return n.fsm.applied
}

// Changes returns a channel that is closed at the next applied entry.
func (n *Node) Changes() <-chan struct{} { return n.fsm.changes() }

// LeadershipChanges delivers true when this node becomes leader and false
// when it stops being leader, in order.
func (n *Node) LeadershipChanges() <-chan bool { return n.notify }

// IsLeader reports whether this node is the raft leader now.
func (n *Node) IsLeader() bool { return n.raft.State() == raft.Leader }

// Term is the current raft term.
func (n *Node) Term() uint64 { return n.raft.CurrentTerm() }

// Leader returns the leader's raft address and id, empty when unknown.
func (n *Node) Leader() (addr, id string) {
	a, i := n.raft.LeaderWithID()
	return string(a), string(i)
}

// LastContact is when a follower last heard from the leader.
func (n *Node) LastContact() time.Time { return n.raft.LastContact() }

// Barrier waits until every entry committed before it is applied locally.
func (n *Node) Barrier(timeout time.Duration) error {
	return n.raft.Barrier(timeout).Error()
}

// VerifyLeader checks with a quorum that this node still leads.
func (n *Node) VerifyLeader() error { return n.raft.VerifyLeader().Error() }

// Stats exposes raft's own statistics.
func (n *Node) Stats() map[string]string { return n.raft.Stats() }

// Snapshot forces a snapshot (used by backup).
func (n *Node) Snapshot() error { return n.raft.Snapshot().Error() }

// HadState reports whether the node found raft state when it opened: a
// node without state must join an existing cluster or bootstrap a new one.
func (n *Node) HadState() bool { return n.hadState }

// Raft exposes the raft instance for membership management (autopilot).
func (n *Node) Raft() *raft.Raft { return n.raft }

// LocalAddr is the raft address peers dial.
func (n *Node) LocalAddr() string { return string(n.trans.LocalAddr()) }

// Servers returns the current raft configuration.
func (n *Node) Servers() ([]raft.Server, error) {
	f := n.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return nil, err
	}
	return f.Configuration().Servers, nil
}

// Voters counts the voting servers in the configuration (at least 1).
func (n *Node) Voters() int {
	servers, err := n.Servers()
	if err != nil {
		return 1
	}
	v := 0
	for _, s := range servers {
		if s.Suffrage == raft.Voter {
			v++
		}
	}
	return max(v, 1)
}

// VoterIDs returns the ids of the voting servers in the configuration;
// empty when the configuration cannot be read.
func (n *Node) VoterIDs() map[string]bool {
	out := map[string]bool{}
	servers, err := n.Servers()
	if err != nil {
		return out
	}
	for _, s := range servers {
		if s.Suffrage == raft.Voter {
			out[string(s.ID)] = true
		}
	}
	return out
}

// BootstrapServers forms a new cluster from an identical server list on
// every member. It fails if this node already has state.
func (n *Node) BootstrapServers(servers []raft.Server) error {
	return n.raft.BootstrapCluster(raft.Configuration{Servers: servers}).Error()
}

// AddNonvoter adds a server that replicates but does not vote until it is
// promoted; re-adding a known server is a no-op.
func (n *Node) AddNonvoter(id, addr string) error {
	return n.raft.AddNonvoter(raft.ServerID(id), raft.ServerAddress(addr), 0, 10*time.Second).Error()
}

// RemoveServer removes a server from the cluster.
func (n *Node) RemoveServer(id string) error {
	return n.raft.RemoveServer(raft.ServerID(id), 0, 10*time.Second).Error()
}

// LeadershipTransfer hands leadership to another voter.
func (n *Node) LeadershipTransfer() error { return n.raft.LeadershipTransfer().Error() }

// Shutdown stops raft and closes the stores.
func (n *Node) Shutdown() error {
	err := n.raft.Shutdown().Error()
	n.trans.Close()
	if cerr := n.store.Close(); err == nil {
		err = cerr
	}
	return err
}

// nodeID reads the node identity from data_dir/node-id, creating it once.
// The identity is never derived from an address.
func nodeID(dataDir string) (string, error) {
	if err := os.MkdirAll(dataDir, 0o750); err != nil {
		return "", fmt.Errorf("cluster: create data dir %s: %w", dataDir, err)
	}
	p := filepath.Join(dataDir, "node-id")
	b, err := os.ReadFile(p)
	if err == nil {
		id := strings.TrimSpace(string(b))
		if id == "" {
			return "", fmt.Errorf("cluster: %s is empty; remove it only if this node's raft data is removed too", p)
		}
		return id, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("cluster: read node id: %w", err)
	}
	var raw [16]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return "", fmt.Errorf("cluster: generate node id: %w", err)
	}
	id := hex.EncodeToString(raw[:])
	tmp := p + ".tmp"
	if err := os.WriteFile(tmp, []byte(id+"\n"), 0o640); err != nil {
		return "", fmt.Errorf("cluster: write node id: %w", err)
	}
	if err := os.Rename(tmp, p); err != nil {
		return "", fmt.Errorf("cluster: write node id: %w", err)
	}
	return id, nil
}

// tcpLayer is a plain TCP stream layer; mTLS replaces it for multi-node
// clusters.
type tcpLayer struct {
	net.Listener
	advertise net.Addr
}

func (t *tcpLayer) Addr() net.Addr { return t.advertise }

func (t *tcpLayer) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	return net.DialTimeout("tcp", string(address), timeout)
}
