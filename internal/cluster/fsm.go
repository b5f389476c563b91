package cluster

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/hashicorp/raft"
	"go.uber.org/zap"

	"github.com/immutd/immutd/internal/state"
)

// fsm adapts state.State to raft.FSM. Readers take the read lock; raft's
// apply goroutine takes the write lock.
type fsm struct {
	log *zap.Logger

	mu      sync.RWMutex
	st      *state.State
	applied uint64
	term    uint64
	// restores counts snapshot restores (installs from a leader included).
	restores int

	// changed is closed and replaced after every applied entry so waiters
	// can block on "the state moved".
	changedMu sync.Mutex
	changed   chan struct{}
}

func newFSM(log *zap.Logger) *fsm {
	return &fsm{log: log, st: state.New(), changed: make(chan struct{})}
}

// Apply implements raft.FSM. A command this release cannot decode stops
// the node (panic) rather than let its state diverge from the others'.
func (f *fsm) Apply(l *raft.Log) interface{} {
	if l.Type != raft.LogCommand {
		return nil
	}
	cmd, err := state.Decode(l.Data)
	if errors.Is(err, state.ErrUnknownIgnorable) {
		f.log.Warn("ignoring unknown command from a newer release", zap.Uint64("index", l.Index), zap.Uint8("type", l.Data[0]))
		f.advance(l.Index, l.Term)
		return state.Result{}
	}
	if err != nil {
		panic(fmt.Sprintf("cluster: log entry %d: %v", l.Index, err))
	}
	f.mu.Lock()
	res := f.st.Apply(cmd)
	f.applied, f.term = l.Index, l.Term
	f.mu.Unlock()
	f.notify()
	return res
}

func (f *fsm) advance(index, term uint64) {
	f.mu.Lock()
	f.applied, f.term = index, term
	f.mu.Unlock()
	f.notify()
}

func (f *fsm) notify() {
	f.changedMu.Lock()
	close(f.changed)
	f.changed = make(chan struct{})
	f.changedMu.Unlock()
}

func (f *fsm) changes() <-chan struct{} {
	f.changedMu.Lock()
	defer f.changedMu.Unlock()
	return f.changed
}

// Snapshot captures the state by encoding it under the read lock; the
// bytes are written out by Persist while applies go on.
func (f *fsm) Snapshot() (raft.FSMSnapshot, error) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	var buf bytes.Buffer
	if err := f.st.WriteSnapshot(&buf); err != nil {
		return nil, err
	}
	return &snapshot{data: buf.Bytes()}, nil
}

// Restore replaces the whole state with a snapshot.
func (f *fsm) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	st, err := state.ReadSnapshot(rc)
	if err != nil {
		return fmt.Errorf("cluster: restore snapshot: %w", err)
	}
	f.mu.Lock()
	f.st = st
	f.restores++
	f.mu.Unlock()
	f.notify()
	return nil
}

type snapshot struct{ data []byte }

func (s *snapshot) Persist(sink raft.SnapshotSink) error {
	if _, err := sink.Write(s.data); err != nil {
		_ = sink.Cancel()
		return fmt.Errorf("cluster: persist snapshot: %w", err)
	}
	return sink.Close()
}

func (s *snapshot) Release() {}
