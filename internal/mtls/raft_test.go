package mtls

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
)

// listFSM records applied entries and reports each on a channel.
type listFSM struct {
	mu      sync.Mutex
	entries []string
	applied chan string
}

func (f *listFSM) Apply(l *raft.Log) any {
	f.mu.Lock()
	f.entries = append(f.entries, string(l.Data))
	f.mu.Unlock()
	select {
	case f.applied <- string(l.Data):
	default:
	}
	return len(l.Data)
}

func (f *listFSM) Snapshot() (raft.FSMSnapshot, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return listSnapshot(append([]string(nil), f.entries...)), nil
}

func (f *listFSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	var entries []string
	if err := json.NewDecoder(rc).Decode(&entries); err != nil {
		return err
	}
	f.mu.Lock()
	f.entries = entries
	f.mu.Unlock()
	return nil
}

type listSnapshot []string

func (s listSnapshot) Persist(sink raft.SnapshotSink) error {
	if err := json.NewEncoder(sink).Encode([]string(s)); err != nil {
		sink.Cancel()
		return err
	}
	return sink.Close()
}

func (listSnapshot) Release() {}

type raftNode struct {
	r     *raft.Raft
	fsm   *listFSM
	trans *raft.NetworkTransport
	mux   *Mux
}

// TestRaftOverMux runs a three-node raft cluster whose transport is the
// mux's raft layer, elects a leader, replicates an entry to every node and
// shuts down.
func TestRaftOverMux(t *testing.T) {
	ca := newTestCA(t, "cluster CA")
	for _, mode := range []string{"tls", "plaintext"} {
		t.Run(mode, func(t *testing.T) {
			nodes := make([]*raftNode, 3)
			var servers []raft.Server
			for i := range nodes {
				var id *Identity
				if mode == "tls" {
					id = newIdentity(t, ca, fmt.Sprintf("node-%d", i))
				}
				m := startMux(t, id, nil, nil)
				trans := raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
					Stream:  m.RaftLayer(),
					MaxPool: 3,
					Timeout: 2 * time.Second,
					Logger:  hclog.NewNullLogger(),
				})
				nodes[i] = &raftNode{fsm: &listFSM{applied: make(chan string, 16)}, trans: trans, mux: m}
				servers = append(servers, raft.Server{ID: raft.ServerID(fmt.Sprintf("node-%d", i)), Address: trans.LocalAddr()})
			}
			for i, n := range nodes {
				conf := raft.DefaultConfig()
				conf.LocalID = servers[i].ID
				// immutd's timing at multiplier 1: the test must hold on a
				// loaded machine.
				conf.HeartbeatTimeout = 200 * time.Millisecond
				conf.ElectionTimeout = 200 * time.Millisecond
				conf.LeaderLeaseTimeout = 100 * time.Millisecond
				conf.CommitTimeout = 25 * time.Millisecond
				conf.Logger = hclog.NewNullLogger()
				r, err := raft.NewRaft(conf, n.fsm, raft.NewInmemStore(), raft.NewInmemStore(), raft.NewInmemSnapshotStore(), n.trans)
				if err != nil {
					t.Fatal(err)
				}
				n.r = r
				if err := r.BootstrapCluster(raft.Configuration{Servers: servers}).Error(); err != nil {
					t.Fatalf("bootstrap node-%d: %v", i, err)
				}
			}
			// Shut down before the muxes close (cleanups run last
			// registered first).
			t.Cleanup(func() {
				for i, n := range nodes {
					if err := n.r.Shutdown().Error(); err != nil {
						t.Errorf("shutdown node-%d: %v", i, err)
					}
					if err := n.trans.Close(); err != nil {
						t.Errorf("close transport node-%d: %v", i, err)
					}
				}
			})

			// Commit one entry. A leader lost while it commits (under load)
			// may or may not have committed it: try again through whoever
			// leads, with a new entry each time; every node must apply the
			// first one that committed.
			leader := waitLeader(t, nodes)
			deadline := time.Now().Add(guard)
			for attempt := 1; ; attempt++ {
				entry := fmt.Sprintf("generation-1 try %d", attempt)
				f := leader.r.Apply([]byte(entry), guard)
				err := f.Error()
				if err == nil {
					if got := f.Response(); got != len(entry) {
						t.Fatalf("apply response %v", got)
					}
					break
				}
				if !errors.Is(err, raft.ErrLeadershipLost) && !errors.Is(err, raft.ErrNotLeader) || time.Now().After(deadline) {
					t.Fatalf("apply: %v", err)
				}
				leader = currentLeader(t, nodes)
			}
			timeout := time.After(guard)
			for i, n := range nodes {
				select {
				case got := <-n.fsm.applied:
					if !strings.HasPrefix(got, "generation-1 try ") {
						t.Fatalf("node-%d applied %q", i, got)
					}
				case <-timeout:
					t.Fatalf("node-%d did not apply the entry", i)
				}
			}
			// Every follower learned the leader over the transport.
			leader = currentLeader(t, nodes)
			for i, n := range nodes {
				for addr, _ := n.r.LeaderWithID(); addr != leader.trans.LocalAddr(); addr, _ = n.r.LeaderWithID() {
					if time.Now().After(deadline) {
						t.Fatalf("node-%d sees leader %q, want %q", i, addr, leader.trans.LocalAddr())
					}
					time.Sleep(10 * time.Millisecond)
				}
			}
		})
	}
}

// currentLeader waits until exactly one node is leader and returns it.
func currentLeader(t *testing.T, nodes []*raftNode) *raftNode {
	t.Helper()
	deadline := time.Now().Add(guard)
	for {
		var leaders []*raftNode
		for _, n := range nodes {
			if n.r.State() == raft.Leader {
				leaders = append(leaders, n)
			}
		}
		if len(leaders) == 1 {
			return leaders[0]
		}
		if time.Now().After(deadline) {
			t.Fatalf("no single leader within %s", guard)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitLeader returns the first node to report leadership.
func waitLeader(t *testing.T, nodes []*raftNode) *raftNode {
	t.Helper()
	found := make(chan *raftNode, len(nodes))
	stop := make(chan struct{})
	defer close(stop)
	for _, n := range nodes {
		go func() {
			for {
				select {
				case isLeader := <-n.r.LeaderCh():
					if isLeader {
						found <- n
						return
					}
				case <-stop:
					return
				}
			}
		}()
	}
	select {
	case n := <-found:
		return n
	case <-time.After(guard):
		t.Fatal("no leader elected")
		return nil
	}
}
