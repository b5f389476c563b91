package file

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/immutd/immutd/internal/traffic"
)

func read(t *testing.T, path string) []group {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var gs []group
	if err := json.Unmarshal(data, &gs); err != nil {
		t.Fatalf("%s is not a target list: %v\n%s", path, err, data)
	}
	return gs
}

func targets(gs []group) []string {
	var out []string
	for _, g := range gs {
		out = append(out, g.Labels[LabelInstance]+"="+g.Targets[0])
	}
	return out
}

func TestAdmitDrainSyncWriteTheTargetList(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "sub", "web.json")
	b, err := New("targets", path, "web", nil)
	if err != nil {
		t.Fatal(err)
	}
	a := traffic.Member{Fleet: "web", InstanceID: "web-a", Address: "127.0.0.1:9001", ImageDigest: "sha256:1", Version: "v1"}
	c := traffic.Member{Fleet: "web", InstanceID: "web-c", Address: "127.0.0.1:9003", ImageDigest: "sha256:1", Version: "v1"}
	for range 2 { // idempotent
		if err := b.Admit(ctx, c); err != nil {
			t.Fatal(err)
		}
		if err := b.Admit(ctx, a); err != nil {
			t.Fatal(err)
		}
	}
	gs := read(t, path)
	if got, want := targets(gs), []string{"web-a=127.0.0.1:9001", "web-c=127.0.0.1:9003"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("targets %v, want %v", got, want)
	}
	if want := map[string]string{LabelFleet: "web", LabelInstance: "web-a", LabelVersion: "v1", LabelDigest: "sha256:1"}; !reflect.DeepEqual(gs[0].Labels, want) {
		t.Fatalf("labels %v, want %v", gs[0].Labels, want)
	}
	if n, known, err := b.Connections(ctx, a); n != 0 || known || err != nil {
		t.Fatalf("connections %d %v %v: a file cannot count them", n, known, err)
	}
	for range 2 {
		if err := b.Drain(ctx, a); err != nil {
			t.Fatal(err)
		}
	}
	if got := targets(read(t, path)); !reflect.DeepEqual(got, []string{"web-c=127.0.0.1:9003"}) {
		t.Fatalf("after drain: %v", got)
	}
	// A new backend over the same file (a new leader) keeps what is there
	// until a sync: c is known and kept, an entry keep does not know goes,
	// an admitted member lost from the file is written again.
	b2, _ := New("targets", path, "web", nil)
	if err := b2.Admit(ctx, a); err != nil {
		t.Fatal(err)
	}
	if got := targets(read(t, path)); !reflect.DeepEqual(got, []string{"web-a=127.0.0.1:9001", "web-c=127.0.0.1:9003"}) {
		t.Fatalf("a new writer dropped entries: %v", got)
	}
	if err := b2.Sync(ctx, []traffic.Member{a}, func(id string) bool { return id == "web-a" }); err != nil {
		t.Fatal(err)
	}
	if got := targets(read(t, path)); !reflect.DeepEqual(got, []string{"web-a=127.0.0.1:9001"}) {
		t.Fatalf("after sync: %v", got)
	}
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	b3, _ := New("targets", path, "web", nil)
	if err := b3.Sync(ctx, []traffic.Member{a, c}, func(string) bool { return true }); err != nil {
		t.Fatal(err)
	}
	if got := targets(read(t, path)); len(got) != 2 {
		t.Fatalf("sync did not re-create the file: %v", got)
	}
	entries, _ := os.ReadDir(filepath.Dir(path))
	if len(entries) != 1 {
		t.Fatalf("temporary files left behind: %v", entries)
	}
}

func TestGarbageFileIsReplaced(t *testing.T) {
	path := filepath.Join(t.TempDir(), "web.json")
	if err := os.WriteFile(path, []byte("not json"), 0o644); err != nil {
		t.Fatal(err)
	}
	b, _ := New("targets", path, "web", nil)
	if err := b.Admit(context.Background(), traffic.Member{Fleet: "web", InstanceID: "web-a", Address: "127.0.0.1:1"}); err != nil {
		t.Fatal(err)
	}
	if got := targets(read(t, path)); !reflect.DeepEqual(got, []string{"web-a=127.0.0.1:1"}) {
		t.Fatalf("targets %v", got)
	}
}

func TestUnwritableDirectoryIsAnError(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "blocker"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	b, _ := New("targets", filepath.Join(dir, "blocker", "web.json"), "web", nil)
	err := b.Admit(context.Background(), traffic.Member{Fleet: "web", InstanceID: "web-a", Address: "127.0.0.1:1"})
	if err == nil {
		t.Fatal("admit into a path under a regular file succeeded")
	}
}

func TestRelativePathIsRefused(t *testing.T) {
	if _, err := New("targets", "targets/web.json", "web", nil); err == nil {
		t.Fatal("relative path accepted")
	}
}

func TestCanaryIsLabelledUntilPromoted(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "web.json")
	b, err := New("targets", path, "web", nil)
	if err != nil {
		t.Fatal(err)
	}
	m := traffic.Member{Fleet: "web", InstanceID: "web-n", Address: "127.0.0.1:9009", ImageDigest: "sha256:2", Version: "v2", Canary: true}
	if err := b.Admit(ctx, m); err != nil {
		t.Fatal(err)
	}
	if got := read(t, path)[0].Labels[LabelCanary]; got != "true" {
		t.Fatalf("canary label %q", got)
	}
	// Promoted: the next sync drops the label.
	m.Canary = false
	if err := b.Sync(ctx, []traffic.Member{m}, func(string) bool { return true }); err != nil {
		t.Fatal(err)
	}
	if _, ok := read(t, path)[0].Labels[LabelCanary]; ok {
		t.Fatalf("canary label kept after the promotion: %v", read(t, path)[0].Labels)
	}
}
