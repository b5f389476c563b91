package main

import (
	"bytes"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/immutd/immutd/internal/backup"
	"github.com/immutd/immutd/internal/config"
	"github.com/immutd/immutd/internal/state"
)

// The snapshot commands' synopses, for TestEveryCommandHasASynopsis.
func init() {
	synopses["snapshot save"] = "usage: immutd snapshot save FILE [flags]"
	synopses["snapshot restore"] = "usage: immutd snapshot restore FILE [flags]"
}

const snapToken = "s3cret-token-0123456789"

// snapshotFile is a valid snapshot file of a state with fleet web.
func snapshotFile(t *testing.T) []byte {
	t.Helper()
	st := state.New()
	st.Apply(&state.SetDesired{SourceHash: "h1", At: time.Unix(1, 0).UTC(), Node: "n1",
		Fleets: []*state.DesiredFleet{{Spec: state.FleetSpec{Name: "web", Size: 3, Provider: "local"}, ImageDigest: "sha256:aa", TemplateHash: "t1"}}})
	var body bytes.Buffer
	if err := st.WriteSnapshot(&body); err != nil {
		t.Fatal(err)
	}
	var f bytes.Buffer
	if err := backup.Write(&f, backup.Header{ImmutdVersion: "test", StateFormat: state.SnapshotFormat, Index: 9, Term: 3,
		CreatedAt: time.Unix(100, 0).UTC(), Node: "agent-1"}, body.Bytes()); err != nil {
		t.Fatal(err)
	}
	return f.Bytes()
}

// snapshotAgent serves file at /v1/snapshot to requests with snapToken
// and fails the test on any other request.
func snapshotAgent(t *testing.T, file []byte) (addr, tokenFile string) {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet || r.URL.Path != "/v1/snapshot" {
			t.Errorf("%s %s reached the agent", r.Method, r.URL)
			http.Error(w, "unexpected", http.StatusTeapot)
			return
		}
		if r.Header.Get("Authorization") != "Bearer "+snapToken {
			w.WriteHeader(http.StatusUnauthorized)
			fmt.Fprintln(w, `{"error":"this request changes state and needs the API token"}`)
			return
		}
		_, _ = w.Write(file)
	}))
	t.Cleanup(srv.Close)
	tokenFile = filepath.Join(t.TempDir(), "api-token")
	if err := os.WriteFile(tokenFile, []byte(snapToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("IMMUTD_CA_FILE", "")
	return srv.URL, tokenFile
}

// onlyFile says whether dir holds exactly the named files (no leftovers
// of a temporary file).
func onlyFiles(t *testing.T, dir string, names ...string) bool {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range ents {
		got = append(got, e.Name())
	}
	return strings.Join(got, ",") == strings.Join(names, ",")
}

func TestSnapshotSave(t *testing.T) {
	good := snapshotFile(t)
	addr, tokenFile := snapshotAgent(t, good)
	dir := t.TempDir()
	path := filepath.Join(dir, "backup.snap")

	code, out, errOut := runCLI(t, "snapshot", "save", path, "-addr", addr)
	if code != 1 || !strings.Contains(errOut, "401") || !strings.Contains(errOut, "no API token was sent") || !onlyFiles(t, dir) {
		t.Fatalf("save without a token: exit %d\n%s%s", code, out, errOut)
	}
	code, out, errOut = runCLI(t, "snapshot", "save", path, "-addr", addr, "-token-file", tokenFile)
	if code != 0 || !strings.Contains(out, "snapshot saved to "+path) || !strings.Contains(out, "raft index 9, term 3") ||
		!strings.Contains(out, "fleets: web") {
		t.Fatalf("save: exit %d\n%s%s", code, out, errOut)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 || !onlyFiles(t, dir, "backup.snap") {
		t.Fatalf("saved file: %v %v", fi, err)
	}
	if b, _ := os.ReadFile(path); !bytes.Equal(b, good) {
		t.Fatal("saved file differs from what the agent sent")
	}
	// Never over an existing file without -force, and then not a byte
	// is asked of the agent.
	if err := os.WriteFile(path, []byte("precious"), 0o600); err != nil {
		t.Fatal(err)
	}
	forbidAgent(t)
	code, _, errOut = runCLI(t, "snapshot", "save", path, "-token-file", tokenFile)
	if b, _ := os.ReadFile(path); code != 1 || string(b) != "precious" || !strings.Contains(errOut, "exists: pass -force to replace it") {
		t.Fatalf("save over an existing file: exit %d %s", code, errOut)
	}
	code, _, errOut = runCLI(t, "snapshot", "save", path, "-addr", addr, "-token-file", tokenFile, "-force")
	if b, _ := os.ReadFile(path); code != 0 || !bytes.Equal(b, good) || !onlyFiles(t, dir, "backup.snap") {
		t.Fatalf("save -force: exit %d %s", code, errOut)
	}
}

func TestSnapshotSaveRefusesWhatDoesNotVerify(t *testing.T) {
	bad := snapshotFile(t)
	bad[len(bad)-3] ^= 0x01
	addr, tokenFile := snapshotAgent(t, bad)
	dir := t.TempDir()
	code, _, errOut := runCLI(t, "snapshot", "save", filepath.Join(dir, "backup.snap"), "-addr", addr, "-token-file", tokenFile)
	if code != 1 || !strings.Contains(errOut, "does not verify; nothing was saved") || !strings.Contains(errOut, "SHA-256") || !onlyFiles(t, dir) {
		t.Fatalf("save of a damaged snapshot: exit %d %s", code, errOut)
	}
}

// agentConfig writes an agent file for a data directory in a temporary
// directory; cluster is the inside of its cluster block.
func agentConfig(t *testing.T, cluster string) (cfgPath, dataDir string) {
	t.Helper()
	dir := t.TempDir()
	dataDir = filepath.Join(dir, "data")
	fleets := filepath.Join(dir, "fleets.d")
	if err := os.MkdirAll(fleets, 0o755); err != nil {
		t.Fatal(err)
	}
	cfgPath = filepath.Join(dir, "agent.hcl")
	cfg := fmt.Sprintf("node_name = \"n1\"\ndata_dir = %q\nfleets_dir = %q\ncluster {\n  bind_addr = \"127.0.0.1:7980\"\n%s\n}\n", dataDir, fleets, cluster)
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	return cfgPath, dataDir
}

func TestSnapshotRestore(t *testing.T) {
	forbidAgent(t)
	cfgPath, dataDir := agentConfig(t, "")
	dir := t.TempDir()
	good := filepath.Join(dir, "good.snap")
	if err := os.WriteFile(good, snapshotFile(t), 0o600); err != nil {
		t.Fatal(err)
	}
	damaged := snapshotFile(t)
	damaged[len(damaged)-3] ^= 0x01
	for _, tt := range []struct {
		name, content, want string
	}{
		{"damaged", string(damaged), "corrupt snapshot file: the body's SHA-256 is"},
		{"foreign", "#!/bin/sh\necho not a snapshot\n", `not an immutd snapshot file (it does not begin with "IMMUTD-SNAPSHOT")`},
		{"truncated", string(snapshotFile(t)[:60]), "corrupt snapshot file"},
	} {
		p := filepath.Join(dir, tt.name+".snap")
		if err := os.WriteFile(p, []byte(tt.content), 0o600); err != nil {
			t.Fatal(err)
		}
		code, _, errOut := runCLI(t, "snapshot", "restore", p, "-config", cfgPath)
		if code != 1 || !strings.Contains(errOut, "nothing was restored") || !strings.Contains(errOut, tt.want) {
			t.Errorf("%s: exit %d %s", tt.name, code, errOut)
		}
		if _, err := os.Stat(dataDir); !os.IsNotExist(err) {
			t.Fatalf("%s: the refused restore wrote the data directory", tt.name)
		}
	}
	code, out, errOut := runCLI(t, "snapshot", "restore", good, "-config", cfgPath)
	if code != 0 || !strings.Contains(out, "restored "+good+" into "+dataDir) || !strings.Contains(out, "next: start this agent") {
		t.Fatalf("restore: exit %d\n%s%s", code, out, errOut)
	}
	if _, err := os.Stat(filepath.Join(dataDir, "raft", "raft.db")); err != nil {
		t.Fatal(err)
	}
	code, _, errOut = runCLI(t, "snapshot", "restore", good, "-config", cfgPath)
	if code != 1 || !strings.Contains(errOut, "holds raft state") || !strings.Contains(errOut, "-force") {
		t.Fatalf("restore over state: exit %d %s", code, errOut)
	}
	code, out, errOut = runCLI(t, "snapshot", "restore", good, "-config", cfgPath, "-force")
	if code != 0 || !strings.Contains(out, "the raft state that was there is in "+filepath.Join(dataDir, "raft.before-restore-")) {
		t.Fatalf("restore -force: exit %d\n%s%s", code, out, errOut)
	}
}

// TestSnapshotRestoreRefusesWhileAPeerRuns: restoring one agent of a
// cluster whose other agents still run would make a second cluster.
func TestSnapshotRestoreRefusesWhileAPeerRuns(t *testing.T) {
	forbidAgent(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	down, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	downAddr := down.Addr().String()
	down.Close()
	tok := filepath.Join(t.TempDir(), "cluster-token")
	if err := os.WriteFile(tok, []byte(snapToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfgPath, dataDir := agentConfig(t, fmt.Sprintf("  bootstrap_expect = 3\n  join = [\"127.0.0.1:7980\", %q, %q]\n  insecure_plaintext {\n    token_file = %q\n  }",
		l.Addr().String(), downAddr, tok))
	p := filepath.Join(t.TempDir(), "good.snap")
	if err := os.WriteFile(p, snapshotFile(t), 0o600); err != nil {
		t.Fatal(err)
	}
	code, _, errOut := runCLI(t, "snapshot", "restore", p, "-config", cfgPath)
	if code != 1 || !strings.Contains(errOut, "the agents at "+l.Addr().String()+" (cluster.join) answer on their cluster port") {
		t.Fatalf("restore next to a running peer: exit %d %s", code, errOut)
	}
	if _, err := os.Stat(dataDir); !os.IsNotExist(err) {
		t.Fatal("the refused restore wrote the data directory")
	}
	if err := peersDown(config.ClusterConfig{BindAddr: "127.0.0.1:7980", AdvertiseAddr: "127.0.0.1:7980", Join: []string{"127.0.0.1:7980", downAddr}}); err != nil {
		t.Fatalf("no peer runs: %v", err)
	}
	code, out, errOut := runCLI(t, "snapshot", "restore", p, "-config", cfgPath, "-ignore-peers")
	if code != 0 || !strings.Contains(out, "then start the other agents") {
		t.Fatalf("restore -ignore-peers: exit %d\n%s%s", code, out, errOut)
	}
}
