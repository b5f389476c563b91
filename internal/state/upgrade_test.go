package state_test

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/immutd/immutd/internal/config"
	"github.com/immutd/immutd/internal/instance"
	"github.com/immutd/immutd/internal/reconcile"
	"github.com/immutd/immutd/internal/state"
)

// golden is the state release dbf9177 wrote (see its README).
const golden = "testdata/release-dbf9177"

func readGoldenSnapshot(t *testing.T) *state.State {
	t.Helper()
	f, err := os.Open(filepath.Join(golden, "snapshot.bin"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, err := state.ReadSnapshot(f)
	if err != nil {
		t.Fatalf("the snapshot of release dbf9177 does not decode: %v", err)
	}
	return st
}

func snapshotBytes(t *testing.T, st *state.State) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := st.WriteSnapshot(&b); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// TestUpgradeFromDbf9177DecodesLogAndSnapshot replays every log entry of
// the old release and checks it yields the state of its snapshot.
func TestUpgradeFromDbf9177DecodesLogAndSnapshot(t *testing.T) {
	snap := readGoldenSnapshot(t)
	f, err := os.Open(filepath.Join(golden, "log.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	replayed := state.New()
	types := map[state.CommandType]bool{}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var e struct {
			Index int    `json:"index"`
			Data  string `json:"data"`
		}
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			t.Fatal(err)
		}
		raw, err := base64.StdEncoding.DecodeString(e.Data)
		if err != nil {
			t.Fatal(err)
		}
		c, err := state.Decode(raw)
		if err != nil {
			t.Fatalf("entry %d of release dbf9177 does not decode: %v", e.Index, err)
		}
		types[c.Type()] = true
		if r := replayed.Apply(c); r.Err != "" {
			t.Fatalf("entry %d rejected on replay: %s", e.Index, r.Err)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if len(types) != 8 {
		t.Errorf("the fixture covers %d command types, want all 8", len(types))
	}
	if got, want := snapshotBytes(t, replayed), snapshotBytes(t, snap); !bytes.Equal(got, want) {
		t.Errorf("replaying the old log gives another state than the old snapshot:\nreplayed %s\nsnapshot %s", got, want)
	}
	if snap.Generation != 4 || len(snap.Instances) != 8 || !snap.Fleets["old"].Unconfigured || snap.Fleets["gone"] != nil {
		t.Errorf("snapshot decoded to an unexpected state: generation %d, %d instances, fleets %v", snap.Generation, len(snap.Instances), snap.FleetNames())
	}
}

// TestUpgradeFromDbf9177RollsNoFleet: the same fleet files, read by this
// release, give every fleet the template hash the old release gave it,
// re-committing them changes no fleet, and a reconcile pass over the old
// state with its instances running and healthy launches and terminates
// nothing.
func TestUpgradeFromDbf9177RollsNoFleet(t *testing.T) {
	snap := readGoldenSnapshot(t)
	var hashes map[string]string
	b, err := os.ReadFile(filepath.Join(golden, "template-hashes.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &hashes); err != nil {
		t.Fatal(err)
	}
	set, err := config.LoadFleets(filepath.Join(golden, "fleets.d"))
	if err != nil {
		t.Fatal(err)
	}
	var fleets []*state.DesiredFleet
	for _, f := range set.Fleets {
		spec := state.SpecOf(f)
		if got := spec.TemplateHash(); got != hashes[f.Name] {
			t.Errorf("fleet %s: template hash %s, release dbf9177 computed %s: every instance of it would roll", f.Name, got, hashes[f.Name])
		}
		old := snap.Fleets[f.Name]
		if old == nil {
			t.Fatalf("fleet %s is not in the old snapshot", f.Name)
		}
		if old.TemplateHash != hashes[f.Name] {
			t.Errorf("fleet %s: snapshot holds template hash %s, fixture says %s", f.Name, old.TemplateHash, hashes[f.Name])
		}
		// A local image is an absolute path, which differs between the
		// machine that made the fixture and this one.
		spec.Image = old.Spec.Image
		if !reflect.DeepEqual(spec, old.Spec) {
			t.Errorf("fleet %s: this release reads the file as\n%+v\nthe old release committed\n%+v", f.Name, spec, old.Spec)
		}
		if f.Name != "old" { // removed from the files before the snapshot
			fleets = append(fleets, &state.DesiredFleet{Spec: spec, ImageDigest: old.ImageDigest, TemplateHash: spec.TemplateHash()})
		}
	}
	st := readGoldenSnapshot(t)
	res := st.Apply(&state.SetDesired{BaseGeneration: st.Generation, SourceHash: "after-upgrade", Fleets: fleets, At: time.Now(), Node: "new"})
	if res.Err != "" || len(res.Changed) != 0 {
		t.Errorf("re-committing the same files after the upgrade changed fleets %v (error %q)", res.Changed, res.Err)
	}

	in := reconcile.Input{Now: time.Date(2026, 11, 30, 11, 0, 0, 0, time.UTC)}
	for _, name := range snap.FleetNames() {
		fi := reconcile.FleetInput{Desired: snap.Fleets[name]}
		if s := snap.Stats[name]; s != nil {
			fi.Stats = *s
		}
		for _, rec := range snap.InstancesOf(name) {
			obs := instance.Observed{ID: rec.ID, Fleet: rec.Fleet, ImageDigest: rec.ImageDigest, TemplateHash: rec.TemplateHash,
				Phase: instance.Running, Address: rec.Address, StartedAt: rec.CreatedAt}
			fi.Instances = append(fi.Instances, reconcile.Inst{ID: rec.ID, Record: rec, Observed: &obs, Health: reconcile.Healthy})
		}
		in.Fleets = append(in.Fleets, fi)
	}
	plan := reconcile.Plan(in)
	for _, a := range plan.Actions {
		t.Errorf("after the upgrade the planner wants %s %s of fleet %s (%s): %v", a.Kind, a.InstanceID, a.Fleet, a.Reason, a.Evidence)
	}
}

func TestTemplateHashSeesLaunchChanges(t *testing.T) {
	set, err := config.LoadFleets(filepath.Join(golden, "fleets.d"))
	if err != nil {
		t.Fatal(err)
	}
	spec := state.SpecOf(set.Fleet("api"))
	before := spec.TemplateHash()
	spec.Launch.Env["LOG_FORMAT"] = "text"
	if spec.TemplateHash() == before {
		t.Error("changing launch.env left the template hash unchanged")
	}
	spec = state.SpecOf(set.Fleet("api"))
	spec.Launch.Docker.ReadOnly = false
	if spec.TemplateHash() == before {
		t.Error("changing launch.docker.read_only left the template hash unchanged")
	}
	spec = state.SpecOf(set.Fleet("api"))
	spec.Size = 9
	spec.Health.Checks = nil
	if spec.TemplateHash() != before {
		t.Error("size and health changed the launch template hash")
	}
}

func bytesReader(b []byte) *bytes.Reader { return bytes.NewReader(b) }

func snapshotOf(t *testing.T, st *state.State) []byte { t.Helper(); return snapshotBytes(t, st) }
