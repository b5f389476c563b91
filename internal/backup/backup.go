// Package backup is the file format of `immutd snapshot save` and
// `immutd snapshot restore`: a snapshot of the replicated state, taken on
// the leader, with a header that lets a restore refuse a file that is not
// one, was cut short or changed, or was written by a newer release,
// before anything is written to a data directory.
//
// A file is three parts:
//
//	IMMUTD-SNAPSHOT\n                    the magic line
//	{"format":1,...,"body_sha256":"…"}\n the header, one JSON line (Header)
//	BODY                                 the state, as state.WriteSnapshot writes it
//
// The body is exactly what the FSM writes into a raft snapshot, so a
// restore hands it to raft unchanged. The file holds the whole state and
// is a secret like the API token: the CLI writes it with mode 0600.
package backup

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/immutd/immutd/internal/state"
)

// Magic is the first line of every snapshot file.
const Magic = "IMMUTD-SNAPSHOT\n"

// Format is the version of the file format this release writes and the
// newest it reads.
const Format = 1

// Limits. A body above MaxBodySize is refused when saving and restoring
// (the state of config.MaxFleets fleets and their instances is far below
// it); the header line is small.
const (
	MaxBodySize   = 256 << 20
	maxHeaderSize = 16 << 10
	// MaxFileSize bounds a whole file.
	MaxFileSize = len(Magic) + maxHeaderSize + MaxBodySize
)

// Errors a caller may branch on; every error of Read wraps one of them.
var (
	// ErrNotSnapshot: the file does not begin with Magic.
	ErrNotSnapshot = errors.New("not an immutd snapshot file")
	// ErrCorrupt: the header does not parse, the body is short, too long
	// or does not match its checksum, or the state does not decode.
	ErrCorrupt = errors.New("corrupt snapshot file")
	// ErrUnsupported: written by a newer release.
	ErrUnsupported = errors.New("unsupported snapshot file")
	// ErrTooLarge: the body exceeds MaxBodySize.
	ErrTooLarge = errors.New("snapshot too large")
)

// Header describes the body that follows it.
type Header struct {
	// Format is the file format (Format).
	Format int `json:"format"`
	// ImmutdVersion is the release of the agent that took the snapshot.
	ImmutdVersion string `json:"immutd_version"`
	// StateFormat is the body's encoding (state.SnapshotFormat).
	StateFormat int `json:"state_format"`
	// Index is the raft index the state reflects (at least), Term the
	// leader's term when it was taken: every term recorded in the state
	// (intents' owners) is at most Term.
	Index uint64 `json:"raft_index"`
	Term  uint64 `json:"raft_term"`
	// CreatedAt is when the leader took it; Node is the leader's name.
	CreatedAt time.Time `json:"created_at"`
	Node      string    `json:"node"`
	// Size and SHA256 are the body's length and hex SHA-256.
	Size   int64  `json:"body_size"`
	SHA256 string `json:"body_sha256"`
}

// Seal sets the header's format, size and checksum from body and returns
// the file's beginning: the magic line and the header line. The whole file
// is that, followed by body.
func Seal(h *Header, body []byte) ([]byte, error) {
	if len(body) > MaxBodySize {
		return nil, fmt.Errorf("%w: the state is %d bytes, more than the limit of %d", ErrTooLarge, len(body), MaxBodySize)
	}
	sum := sha256.Sum256(body)
	h.Format, h.Size, h.SHA256 = Format, int64(len(body)), hex.EncodeToString(sum[:])
	line, err := json.Marshal(h)
	if err != nil {
		return nil, err
	}
	if len(line)+1 > maxHeaderSize {
		return nil, fmt.Errorf("backup: header of %d bytes exceeds %d", len(line)+1, maxHeaderSize)
	}
	out := make([]byte, 0, len(Magic)+len(line)+1)
	out = append(out, Magic...)
	out = append(out, line...)
	return append(out, '\n'), nil
}

// Write writes a whole file: Seal's beginning, then body.
func Write(w io.Writer, h Header, body []byte) error {
	head, err := Seal(&h, body)
	if err != nil {
		return err
	}
	if _, err := w.Write(head); err != nil {
		return err
	}
	_, err = w.Write(body)
	return err
}

// Snapshot is a verified snapshot file.
type Snapshot struct {
	Header Header
	// Body is the state as state.WriteSnapshot wrote it.
	Body []byte
	// State is Body decoded.
	State *state.State
}

// Read reads a whole file from r and verifies it: the magic line, a
// header of a format this release reads, a body of at most MaxBodySize
// bytes that is exactly as long as the header says, nothing after it, the
// body's SHA-256, and a state that decodes. Nothing of a file that fails
// any check is returned.
func Read(r io.Reader) (*Snapshot, error) {
	br := bufio.NewReaderSize(r, 64<<10)
	magic := make([]byte, len(Magic))
	if n, err := io.ReadFull(br, magic); err != nil || string(magic) != Magic {
		hint := "only a file written by `immutd snapshot save` can be restored"
		if n > 0 && magic[0] == '{' {
			hint = "it looks like a raft snapshot (data_dir/raft/snapshots/*/state.bin) or other JSON; " + hint
		}
		return nil, fmt.Errorf("%w (it does not begin with %q): %s", ErrNotSnapshot, Magic[:len(Magic)-1], hint)
	}
	line, err := readLine(br, maxHeaderSize)
	if err != nil {
		return nil, fmt.Errorf("%w: header: %v", ErrCorrupt, err)
	}
	var h Header
	if err := json.Unmarshal(line, &h); err != nil {
		return nil, fmt.Errorf("%w: header: %v", ErrCorrupt, err)
	}
	if err := h.check(); err != nil {
		return nil, err
	}
	// Read what is there rather than allocate what the header claims.
	body, err := io.ReadAll(io.LimitReader(br, h.Size))
	if err != nil {
		return nil, fmt.Errorf("%w: body: %v", ErrCorrupt, err)
	}
	if int64(len(body)) < h.Size {
		return nil, fmt.Errorf("%w: truncated: the body has %d of the %d bytes the header announces", ErrCorrupt, len(body), h.Size)
	}
	if n, _ := io.Copy(io.Discard, io.LimitReader(br, 1<<20)); n > 0 {
		return nil, fmt.Errorf("%w: %d or more bytes follow the %d-byte body the header announces", ErrCorrupt, n, h.Size)
	}
	sum := sha256.Sum256(body)
	if got := hex.EncodeToString(sum[:]); got != h.SHA256 {
		return nil, fmt.Errorf("%w: the body's SHA-256 is %s, the header says %s: the file was changed or damaged", ErrCorrupt, got, h.SHA256)
	}
	st, err := state.ReadSnapshot(bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("%w: the state does not decode: %v", ErrCorrupt, err)
	}
	return &Snapshot{Header: h, Body: body, State: st}, nil
}

// check judges a header before its body is read.
func (h Header) check() error {
	switch {
	case h.Format > Format:
		return fmt.Errorf("%w: file format %d is newer than this release of immutd reads (%d); it was saved by immutd %.64q: restore it with that release or a newer one",
			ErrUnsupported, h.Format, Format, h.ImmutdVersion)
	case h.Format < 1:
		return fmt.Errorf("%w: header: format %d", ErrCorrupt, h.Format)
	case h.StateFormat > state.SnapshotFormat:
		return fmt.Errorf("%w: the state is encoded in format %d, newer than this release of immutd reads (%d); it was saved by immutd %.64q",
			ErrUnsupported, h.StateFormat, state.SnapshotFormat, h.ImmutdVersion)
	case h.StateFormat < 1:
		return fmt.Errorf("%w: header: state format %d", ErrCorrupt, h.StateFormat)
	case h.Size > MaxBodySize:
		return fmt.Errorf("%w: the header announces a body of %d bytes, more than the limit of %d (256 MiB)", ErrTooLarge, h.Size, MaxBodySize)
	case h.Size < 0:
		return fmt.Errorf("%w: header: body size %d", ErrCorrupt, h.Size)
	case len(h.SHA256) != 64:
		return fmt.Errorf("%w: header: body_sha256 %.80q is not a hex SHA-256", ErrCorrupt, h.SHA256)
	case h.Term == 0:
		return fmt.Errorf("%w: header: raft term 0", ErrCorrupt)
	}
	return nil
}

// readLine reads one line of at most max bytes (the newline included) and
// returns it without the newline.
func readLine(br *bufio.Reader, max int) ([]byte, error) {
	var line []byte
	for {
		chunk, err := br.ReadSlice('\n')
		line = append(line, chunk...)
		if len(line) > max {
			return nil, fmt.Errorf("longer than %d bytes", max)
		}
		switch {
		case err == nil:
			return line[:len(line)-1], nil
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		case errors.Is(err, io.EOF):
			return nil, errors.New("the file ends inside the header")
		default:
			return nil, err
		}
	}
}

// ReadFile reads and verifies the snapshot file at path (see Read); a
// file larger than MaxFileSize is refused before it is read.
func ReadFile(path string) (*Snapshot, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file", path)
	}
	if fi.Size() > int64(MaxFileSize) {
		return nil, fmt.Errorf("%s: %w: %d bytes, more than the limit of %d (a body of at most 256 MiB and its header)", path, ErrTooLarge, fi.Size(), MaxFileSize)
	}
	s, err := Read(io.LimitReader(f, int64(MaxFileSize)+1))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return s, nil
}

// MaxIntentTerm is the highest raft term an open intent of st is owned
// by (0 without intents). A cluster restored from st must be in a later
// term, or its leader could not claim them.
func MaxIntentTerm(st *state.State) uint64 {
	var m uint64
	for _, it := range st.Intents {
		m = max(m, it.Term)
	}
	return m
}
