package state_test

import (
	"bufio"
	"encoding/base64"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/immutd/immutd/internal/state"
)

// FuzzDecodeCommand feeds arbitrary log entries to Decode and applies
// what decodes to a copy of a real state: nothing may panic, a decoded
// command encodes again to an entry that decodes, and applying is
// deterministic (two copies end equal).
func FuzzDecodeCommand(f *testing.F) {
	fh, err := os.Open(filepath.Join(golden, "log.jsonl"))
	if err != nil {
		f.Fatal(err)
	}
	sc := bufio.NewScanner(fh)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var e struct {
			Data string `json:"data"`
		}
		if json.Unmarshal(sc.Bytes(), &e) == nil {
			if b, err := base64.StdEncoding.DecodeString(e.Data); err == nil {
				f.Add(b)
			}
		}
	}
	fh.Close()
	f.Add([]byte{byte(state.TypeRecordEvents), 1, 'n', 'u', 'l', 'l'})
	for typ, body := range map[state.CommandType]string{
		state.TypeCommitIntents: `{"generation":4,"intents":[null]}`,
		state.TypeSetDesired:    `{"base_generation":4,"fleets":[null]}`,
		state.TypeAdopt:         `{"instances":[null]}`,
		state.TypeClaimIntents:  `{"op_ids":[null]}`,
	} {
		f.Add(append([]byte{byte(typ), 1}, body...))
	}
	snap, err := os.ReadFile(filepath.Join(golden, "snapshot.bin"))
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, entry []byte) {
		c, err := state.Decode(entry)
		if err != nil {
			return
		}
		again, err := state.Encode(c)
		if err != nil {
			t.Fatalf("a decoded %T does not encode: %v", c, err)
		}
		if _, err := state.Decode(again); err != nil {
			t.Fatalf("a re-encoded %T does not decode: %v", c, err)
		}
		var outs [2][]byte
		for i := range outs {
			st, err := state.ReadSnapshot(bytesReader(snap))
			if err != nil {
				t.Fatal(err)
			}
			d, _ := state.Decode(entry)
			st.Apply(d)
			outs[i] = snapshotOf(t, st)
		}
		if string(outs[0]) != string(outs[1]) {
			t.Fatal("applying the same entry twice to the same state gave two states")
		}
	})
}
