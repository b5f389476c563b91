package backup

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/immutd/immutd/internal/state"
)

// sample is a state with a fleet, an instance and an open intent, and its
// encoding.
func sample(t *testing.T) (*state.State, []byte) {
	t.Helper()
	st := state.New()
	st.Apply(&state.SetDesired{SourceHash: "h1", At: time.Unix(1, 0).UTC(), Node: "n1",
		Fleets: []*state.DesiredFleet{{Spec: state.FleetSpec{Name: "web", Size: 3, Provider: "local"}, ImageDigest: "sha256:aa", TemplateHash: "t1"}}})
	st.Apply(&state.Adopt{Instances: []*state.Instance{{ID: "i-1", Fleet: "web", ImageDigest: "sha256:aa", TemplateHash: "t1"}}, At: time.Unix(2, 0).UTC()})
	st.Apply(&state.CommitIntents{Generation: st.Generation, At: time.Unix(3, 0).UTC(), Intents: []*state.Intent{{OpID: "op-1", Kind: state.Launch,
		Fleet: "web", InstanceID: "i-2", Reason: "scale_up", Term: 7, Generation: st.Generation, ImageDigest: "sha256:aa", TemplateHash: "t1"}}})
	var buf bytes.Buffer
	if err := st.WriteSnapshot(&buf); err != nil {
		t.Fatal(err)
	}
	return st, buf.Bytes()
}

func header() Header {
	return Header{ImmutdVersion: "test", StateFormat: state.SnapshotFormat, Index: 42, Term: 7, CreatedAt: time.Unix(100, 0).UTC(), Node: "agent-1"}
}

func file(t *testing.T, h Header, body []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := Write(&buf, h, body); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestRoundTrip(t *testing.T) {
	st, body := sample(t)
	f := file(t, header(), body)
	if !bytes.HasPrefix(f, []byte(Magic+`{"format":1,`)) {
		t.Fatalf("file begins %q", f[:40])
	}
	s, err := Read(bytes.NewReader(f))
	if err != nil {
		t.Fatal(err)
	}
	h := s.Header
	if h.Format != Format || h.Index != 42 || h.Term != 7 || h.Node != "agent-1" || h.ImmutdVersion != "test" || h.Size != int64(len(body)) || len(h.SHA256) != 64 {
		t.Fatalf("header %+v", h)
	}
	if !bytes.Equal(s.Body, body) {
		t.Fatal("body changed")
	}
	if s.State.Generation != st.Generation || len(s.State.Instances) != 1 || len(s.State.Intents) != 1 || s.State.Fleets["web"] == nil {
		t.Fatalf("state %+v", s.State)
	}
	if MaxIntentTerm(s.State) != 7 {
		t.Fatalf("max intent term %d", MaxIntentTerm(s.State))
	}
}

// TestRefusals: every damaged, foreign, newer or oversized file is refused
// with an error that says which, before its state is used.
func TestRefusals(t *testing.T) {
	_, body := sample(t)
	good := file(t, header(), body)
	headerEnd := bytes.IndexByte(good[len(Magic):], '\n') + len(Magic) + 1
	mutHeader := func(fn func(m map[string]any)) []byte {
		var m map[string]any
		if err := json.Unmarshal(good[len(Magic):headerEnd-1], &m); err != nil {
			t.Fatal(err)
		}
		fn(m)
		line, _ := json.Marshal(m)
		return append(append([]byte(Magic), append(line, '\n')...), body...)
	}
	flipped := bytes.Clone(good)
	flipped[headerEnd+len(body)/2] ^= 0x20
	badState := file(t, header(), []byte(`{"format":1}`+"\n"+`{"fleets": 12}`+"\n"))
	tests := []struct {
		name string
		data []byte
		is   error
		msg  string
	}{
		{"empty", nil, ErrNotSnapshot, "not an immutd snapshot file"},
		{"foreign", []byte("PK\x03\x04 a zip file, not a snapshot at all"), ErrNotSnapshot, `does not begin with "IMMUTD-SNAPSHOT"`},
		{"raft state.bin", body, ErrNotSnapshot, "looks like a raft snapshot"},
		{"body changed", flipped, ErrCorrupt, "the body's SHA-256 is"},
		{"truncated", good[:len(good)-10], ErrCorrupt, "truncated: the body has"},
		{"trailing data", append(bytes.Clone(good), "more"...), ErrCorrupt, "bytes follow the"},
		{"header cut", good[:headerEnd-5], ErrCorrupt, "the file ends inside the header"},
		{"header not json", append([]byte(Magic+"{format: one}\n"), body...), ErrCorrupt, "header"},
		{"newer format", mutHeader(func(m map[string]any) { m["format"] = 2 }), ErrUnsupported, "file format 2 is newer than this release of immutd reads (1)"},
		{"newer state", mutHeader(func(m map[string]any) { m["state_format"] = 99 }), ErrUnsupported, "the state is encoded in format 99"},
		{"format zero", mutHeader(func(m map[string]any) { m["format"] = 0 }), ErrCorrupt, "format 0"},
		{"too large", mutHeader(func(m map[string]any) { m["body_size"] = MaxBodySize + 1 }), ErrTooLarge, "more than the limit of 268435456 (256 MiB)"},
		{"negative size", mutHeader(func(m map[string]any) { m["body_size"] = -1 }), ErrCorrupt, "body size -1"},
		{"no checksum", mutHeader(func(m map[string]any) { m["body_sha256"] = "" }), ErrCorrupt, "is not a hex SHA-256"},
		{"size lies", mutHeader(func(m map[string]any) { m["body_size"] = len(body) - 1 }), ErrCorrupt, "bytes follow the"},
		{"term zero", mutHeader(func(m map[string]any) { m["raft_term"] = 0 }), ErrCorrupt, "raft term 0"},
		{"state does not decode", badState, ErrCorrupt, "the state does not decode"},
	}
	// A header line longer than its limit.
	long := append([]byte(Magic+`{"node":"`), bytes.Repeat([]byte("n"), maxHeaderSize)...)
	tests = append(tests, struct {
		name string
		data []byte
		is   error
		msg  string
	}{"header over its limit", append(long, "\"}\n"...), ErrCorrupt, "longer than 16384 bytes"})
	for _, tt := range tests {
		s, err := Read(bytes.NewReader(tt.data))
		if err == nil || s != nil {
			t.Errorf("%s: read without error", tt.name)
			continue
		}
		if !errors.Is(err, tt.is) || !strings.Contains(err.Error(), tt.msg) {
			t.Errorf("%s: error %q, want %v containing %q", tt.name, err, tt.is, tt.msg)
		}
	}
}

func TestSealRefusesTooLargeState(t *testing.T) {
	h := header()
	if _, err := Seal(&h, make([]byte, MaxBodySize+1)); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("seal of a too large state: %v", err)
	}
}

func TestReadFile(t *testing.T) {
	_, body := sample(t)
	dir := t.TempDir()
	p := filepath.Join(dir, "s.snap")
	if err := os.WriteFile(p, file(t, header(), body), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadFile(p); err != nil {
		t.Fatal(err)
	}
	// A file above the limit is refused by its size, unread.
	big := filepath.Join(dir, "big.snap")
	f, err := os.Create(big)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(int64(MaxFileSize) + 1); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if _, err := ReadFile(big); !errors.Is(err, ErrTooLarge) || !strings.Contains(err.Error(), "more than the limit") {
		t.Fatalf("too large file: %v", err)
	}
	if _, err := ReadFile(dir); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Fatalf("directory: %v", err)
	}
	if _, err := ReadFile(filepath.Join(dir, "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing file: %v", err)
	}
}
