package state

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
)

// SnapshotFormat is the version of the snapshot encoding.
const SnapshotFormat = 1

type snapshotHeader struct {
	Format int `json:"format"`
}

// WriteSnapshot writes the state as a header line followed by the JSON
// encoded state.
func (s *State) WriteSnapshot(w io.Writer) error {
	bw := bufio.NewWriter(w)
	enc := json.NewEncoder(bw)
	if err := enc.Encode(snapshotHeader{Format: SnapshotFormat}); err != nil {
		return fmt.Errorf("state: write snapshot header: %w", err)
	}
	if err := enc.Encode(s); err != nil {
		return fmt.Errorf("state: write snapshot: %w", err)
	}
	return bw.Flush()
}

// ReadSnapshot reads a state written by WriteSnapshot.
func ReadSnapshot(r io.Reader) (*State, error) {
	dec := json.NewDecoder(bufio.NewReader(r))
	var h snapshotHeader
	if err := dec.Decode(&h); err != nil {
		return nil, fmt.Errorf("state: read snapshot header: %w", err)
	}
	if h.Format < 1 || h.Format > SnapshotFormat {
		return nil, fmt.Errorf("state: snapshot format %d is not supported by this release (max %d)", h.Format, SnapshotFormat)
	}
	s := New()
	if err := dec.Decode(s); err != nil {
		return nil, fmt.Errorf("state: read snapshot: %w", err)
	}
	if s.Fleets == nil {
		s.Fleets = map[string]*DesiredFleet{}
	}
	if s.Instances == nil {
		s.Instances = map[string]*Instance{}
	}
	if s.Intents == nil {
		s.Intents = map[string]*Intent{}
	}
	if s.Stats == nil {
		s.Stats = map[string]*FleetStats{}
	}
	if s.Proposed == nil {
		s.Proposed = map[string]string{}
	}
	if s.Finished == nil {
		s.Finished = map[string]uint64{}
	}
	return s, nil
}
