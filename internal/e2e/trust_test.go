package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/immutd/immutd/internal/config"
	"github.com/immutd/immutd/internal/pki"
)

// Tests of finding 1 of the trust audit: the cluster port changes nothing
// for anyone without a credential, and the credential holders' requests
// are checked too. They attack as a process on the same host would: over
// loopback, with what such a process can make itself.

// rpcRequest is one HTTP request to the agent RPC of a cluster port.
func rpcRequest(method, path string, body []byte) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "%s %s HTTP/1.1\r\nHost: cluster\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n", method, path, len(body))
	b.Write(body)
	return b.Bytes()
}

// attack sends one RPC to a cluster port as a stranger: plaintext (the
// protocol byte 'H', then HTTP), or over TLS with cfg first. It returns
// the HTTP status, or the error that ended the attempt.
func attack(addr string, cfg *tls.Config, method, path string, body []byte) (int, string, error) {
	raw, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return 0, "", err
	}
	defer raw.Close()
	_ = raw.SetDeadline(time.Now().Add(15 * time.Second))
	var conn net.Conn = raw
	if cfg != nil {
		tc := tls.Client(raw, cfg)
		if err := tc.Handshake(); err != nil {
			return 0, "", fmt.Errorf("tls handshake: %w", err)
		}
		conn = tc
	}
	// Write while reading: a server that refuses a body answers before it
	// has read all of it.
	wrote := make(chan error, 1)
	go func() {
		_, err := conn.Write(append([]byte{'H'}, rpcRequest(method, path, body)...))
		wrote <- err
	}()
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		if werr := <-wrote; werr != nil {
			return 0, "", fmt.Errorf("write: %w", werr)
		}
		return 0, "", fmt.Errorf("read: %w", err)
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	return resp.StatusCode, string(msg), nil
}

// evilProposals are proposals that would run a command as the agent's
// user: in the format of release dbf9177 (decoded fleets) and in this
// release's (fleet files).
func evilProposals(t *testing.T, marker, proposerID string) map[string][]byte {
	t.Helper()
	cmd := []string{"/bin/sh", "-c", "id > " + marker}
	v1, err := json.Marshal(map[string]any{"proposer_id": proposerID, "proposer_name": "mallory", "hash": "evil", "start_hash": "evil",
		"fleets": []map[string]any{{"name": "evil", "size": 1, "provider": config.ProviderLocal, "image": filepath.Join(imagesDir, "sampleapp-v1"),
			"launch":      map[string]any{"command": cmd, "stop_grace": int64(time.Second)},
			"health":      map[string]any{"checks": []map[string]any{{"name": "p", "kind": "tcp", "interval": int64(time.Second), "timeout": int64(time.Second), "healthy_threshold": 1, "unhealthy_threshold": 3, "startup_timeout": int64(time.Minute)}}},
			"remediation": map[string]any{"enabled": true, "max_unhealthy": map[string]any{"value": 50, "percent": true}, "max_parallel": 1},
			"rollout":     map[string]any{"max_surge": map[string]any{"value": 1}},
			"drift":       map[string]any{"interval": int64(time.Second), "orphans": "adopt"}}}})
	if err != nil {
		t.Fatal(err)
	}
	file := strings.Replace(fleetFile("evil", 1, "v1", ""), `stop_grace = "2s"`, fmt.Sprintf("stop_grace = \"2s\"\n    command = [%q, %q, %q]", cmd[0], cmd[1], cmd[2]), 1)
	files := []config.File{{Name: "evil.hcl", Content: []byte(file)}}
	v2, err := json.Marshal(map[string]any{"proposer_id": proposerID, "proposer_name": "mallory", "dir": "/tmp", "hash": config.HashFleetFiles(files),
		"start_hash": "evil", "files": files})
	if err != nil {
		t.Fatal(err)
	}
	return map[string][]byte{"/cluster/v1/propose": v1, "/cluster/v2/propose": v2}
}

// TestClusterPortRefusesStrangers: a single agent (the `make run` shape,
// with an API token) whose cluster port strangers on the same host try:
// plaintext, TLS without a certificate, TLS with a certificate of their
// own CA. No proposal is committed (the command never runs, the fleet
// never appears), no forged drain, verdict or join changes anything, and
// a 200 MB body goes nowhere.
func TestClusterPortRefusesStrangers(t *testing.T) {
	dir := t.TempDir()
	token := filepath.Join(dir, "token")
	if err := os.WriteFile(token, []byte("0123456789abcdef-trust\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, envOpts{extra: fmt.Sprintf("api {\n  token_file = %q\n}\n", token)})
	e.writeFleet("web.hcl", fleetFile("web", 1, "v1", ""))
	e.start()
	before := e.waitHealthy("web", 1, "", 30*time.Second)
	victim := before.Instances[0].ID
	raftDB := filepath.Join(e.dataDir, "raft", "raft.db")
	fi, err := os.Stat(raftDB)
	if err != nil {
		t.Fatal(err)
	}
	dbBefore := fi.Size()
	marker := filepath.Join(dir, "marker")

	// A TLS client without a certificate, and one with a certificate of
	// its own CA that even carries the cluster's server name.
	caCert, caKey, err := pki.NewCA("mallory CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cert, key, err := pki.NewCert(caCert, caKey, "mallory", []string{"server.immutd"}, []net.IP{net.ParseIP("127.0.0.1")}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.X509KeyPair(cert, key)
	if err != nil {
		t.Fatal(err)
	}
	clients := map[string]*tls.Config{
		"plaintext":           nil,
		"tls, no certificate": {InsecureSkipVerify: true, MinVersion: tls.VersionTLS13},
		"tls, own CA":         {InsecureSkipVerify: true, MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{pair}},
	}
	requests := map[string][]byte{}
	for path, body := range evilProposals(t, marker, "mallory") {
		requests["POST "+path] = body
	}
	requests["POST /cluster/v1/drain"] = []byte(`{"fleet":"web"}`)
	requests["POST /cluster/v1/verdicts"] = []byte(fmt.Sprintf(`{"node_id":"made-up","node_name":"mallory","at":%q,"verdicts":{%q:{"state":"unhealthy","evidence":["forged"]}}}`,
		time.Now().Format(time.RFC3339Nano), victim))
	requests["POST /cluster/v1/join"] = []byte(`{"id":"fake-member","name":"fake","addr":"127.0.0.1:1"}`)
	for client, cfg := range clients {
		for req, body := range requests {
			method, path, _ := strings.Cut(req, " ")
			code, msg, err := attack(e.raftAddr, cfg, method, path, body)
			if err == nil {
				t.Errorf("%s %s from a stranger (%s): answered %d %s", method, path, client, code, msg)
			}
		}
	}
	// 200 MB in plaintext: the port closes the connection after the first
	// bytes, long before the body is through.
	big := make([]byte, 200<<20)
	conn, err := net.Dial("tcp", e.raftAddr)
	if err != nil {
		t.Fatal(err)
	}
	_ = conn.SetWriteDeadline(time.Now().Add(time.Minute))
	n, werr := conn.Write(append([]byte{'H'}, append(rpcRequest("POST", "/cluster/v2/propose", nil), big...)...))
	conn.Close()
	if werr == nil {
		t.Errorf("the cluster port took a 200 MB body from a stranger")
	}
	t.Logf("the cluster port closed the connection after %d of %d bytes: %v", n, len(big), werr)

	// Nothing of it had any effect.
	e.waitPasses(3)
	if _, err := os.Stat(marker); err == nil {
		t.Fatal("the forged proposal's command ran")
	}
	st := e.status()
	if len(st.Fleets) != 1 || st.Fleets[0].Name != "web" {
		t.Fatalf("fleets after the attack: %+v", st.Fleets)
	}
	f := e.waitHealthy("web", 1, "", 30*time.Second)
	if f.Instances[0].ID != victim || findEvent(e.events(), "terminated", victim) != nil {
		t.Fatalf("the instance was replaced after forged requests: %s", describe(f))
	}
	if ev := findEvent(e.events(), "drain_started", ""); ev != nil {
		t.Fatalf("a forged drain started: %+v", ev)
	}
	ms, err := e.client.Members(context.Background())
	if err != nil || len(ms) != 1 {
		t.Fatalf("members after a forged join: %+v %v", ms, err)
	}
	if fi, err := os.Stat(raftDB); err != nil || fi.Size() > dbBefore+4<<20 {
		t.Fatalf("raft.db grew from %d to %d bytes", dbBefore, fi.Size())
	}
	// The API refuses the same without the token; with it, the drain is
	// refused for what it is (web is still configured), not for a
	// missing credential.
	if out, code := runCLI("fleet", "drain", "web", "-addr", e.httpAddr); code == 0 || !strings.Contains(out, "401") {
		t.Fatalf("drain without the token: exit %d: %s", code, out)
	}
	if out, code := runCLI("fleet", "drain", "web", "-addr", e.httpAddr, "-token-file", token); code == 0 || !strings.Contains(out, "still configured") {
		t.Fatalf("drain of a configured fleet with the token: exit %d: %s", code, out)
	}
}

// TestAPIAlwaysNeedsAToken: an agent without api.token_file makes its
// own token in its data directory; a state change without it is refused.
func TestAPIAlwaysNeedsAToken(t *testing.T) {
	e := newEnv(t, envOpts{})
	e.writeFleet("old.hcl", fleetFile("old", 1, "v1", ""))
	e.start()
	e.waitHealthy("old", 1, "", 30*time.Second)
	if err := os.Remove(filepath.Join(e.fleetsDir, "old.hcl")); err != nil {
		t.Fatal(err)
	}
	e.waitFor("old to be unconfigured", 10*time.Second, func() (bool, string) {
		f := e.fleet("old")
		return f.Unconfigured, describe(f)
	})
	fi, err := os.Stat(e.tokenFile())
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("the agent's own token file: %v %v", fi, err)
	}
	out, code := runCLI("fleet", "drain", "old", "-addr", e.httpAddr)
	if code == 0 || !strings.Contains(out, "401") || !strings.Contains(out, e.tokenFile()) {
		t.Fatalf("drain without a token: exit %d: %s", code, out)
	}
	if f := e.fleet("old"); f.Draining || len(f.Instances) != 1 {
		t.Fatalf("the fleet drained without a token: %s", describe(f))
	}
	if out, code := e.cli("fleet", "drain", "old"); code != 0 {
		t.Fatalf("drain with the agent's token: exit %d: %s", code, out)
	}
}

// clusterClient is a TLS client of the cluster port holding a
// certificate of the cluster's own CA: a member's credential.
func clusterClient(t *testing.T, c *cluster, name string) *tls.Config {
	t.Helper()
	caPEM, err := os.ReadFile(filepath.Join(c.tlsDir, "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	caKey, err := os.ReadFile(filepath.Join(c.tlsDir, "ca-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	cert, key, err := pki.NewCert(caPEM, caKey, name, []string{"server.immutd"}, []net.IP{net.ParseIP("127.0.0.1")}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.X509KeyPair(cert, key)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	return &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: pool, ServerName: "server.immutd", Certificates: []tls.Certificate{pair}}
}

// TestClusterChecksWhatMembersSend: even with a certificate of the
// cluster CA, a verdict report counts only from a voter, a proposal only
// from a server of the cluster and only when its files pass the config
// rules, and every body has a limit.
func TestClusterChecksWhatMembersSend(t *testing.T) {
	c := newCluster(t, 3, "")
	c.writeFleet("web.hcl", fleetFile("web", 1, "v1", ""))
	c.start()
	f := c.waitHealthy("web", 1)
	victim := f.Instances[0].ID
	l := c.leader()
	leaderAddr := c.raftAddrs[l]
	cfg := clusterClient(t, c, "mallory")
	st, err := c.agents[l].consistentStatus()
	if err != nil {
		t.Fatal(err)
	}
	gen := st.Generation
	// A voter's id, from the leader's member list.
	ms, err := c.agents[l].client.Members(context.Background())
	if err != nil || len(ms) != 3 {
		t.Fatalf("members: %+v %v", ms, err)
	}
	memberID := ""
	for _, m := range ms {
		if !m.Leader {
			memberID = m.ID
		}
	}
	verdict := func(nodeID string) []byte {
		return []byte(fmt.Sprintf(`{"node_id":%q,"node_name":"mallory","at":%q,"verdicts":{%q:{"state":"unhealthy","evidence":["forged"]}}}`,
			nodeID, time.Now().Format(time.RFC3339Nano), victim))
	}
	badFile := []config.File{{Name: "bad.hcl", Content: []byte(strings.Replace(fleetFile("bad", 1, "v1", ""), "size     = 1", "size     = 100000", 1))}}
	badFiles, _ := json.Marshal(map[string]any{"proposer_id": memberID, "proposer_name": "agent-2", "dir": c.fleetsDir,
		"hash": config.HashFleetFiles(badFile), "start_hash": "x", "files": badFile})
	good := []config.File{{Name: "web.hcl", Content: []byte(fleetFile("web", 1, "v1", ""))}}
	wrongHash, _ := json.Marshal(map[string]any{"proposer_id": memberID, "proposer_name": "agent-2", "dir": c.fleetsDir,
		"hash": "0000", "start_hash": "x", "files": good})
	huge := fmt.Sprintf(`{"proposer_id":%q,"files":[{"name":"a.hcl","content":"%s"}]}`, memberID, base64.StdEncoding.EncodeToString(make([]byte, 30<<20)))
	for _, tc := range []struct {
		name, path string
		body       []byte
		want       int
	}{
		{"a verdict from a made-up node id", "/cluster/v1/verdicts", verdict("made-up-node"), http.StatusForbidden},
		{"a verdict claiming to be the leader", "/cluster/v1/verdicts", verdict(st.NodeID), http.StatusForbidden},
		{"a verdict in an unknown state", "/cluster/v1/verdicts", []byte(fmt.Sprintf(`{"node_id":%q,"verdicts":{"x":{"state":"dead"}}}`, memberID)), http.StatusBadRequest},
		{"a proposal from a server that is not in the cluster", "/cluster/v2/propose", evilProposals(t, filepath.Join(t.TempDir(), "m"), "not-a-member")["/cluster/v2/propose"], http.StatusForbidden},
		{"a proposal whose files break the config rules", "/cluster/v2/propose", badFiles, http.StatusUnprocessableEntity},
		{"a proposal whose hash is not its files'", "/cluster/v2/propose", wrongHash, http.StatusBadRequest},
		{"a proposal in the old format", "/cluster/v1/propose", evilProposals(t, filepath.Join(t.TempDir(), "m"), memberID)["/cluster/v1/propose"], http.StatusGone},
		{"a drain with a bad fleet name", "/cluster/v1/drain", []byte(`{"fleet":"../../etc"}`), http.StatusBadRequest},
		{"a join with a bad address", "/cluster/v1/join", []byte(`{"id":"fake-member","name":"fake","addr":"0.0.0.0:0"}`), http.StatusBadRequest},
		{"a body with unknown fields", "/cluster/v1/drain", []byte(`{"fleet":"web","force":true}`), http.StatusBadRequest},
	} {
		code, msg, err := attack(leaderAddr, cfg, "POST", tc.path, tc.body)
		if err != nil || code != tc.want {
			t.Errorf("%s: got %d %s (%v), want %d", tc.name, code, strings.TrimSpace(msg), err, tc.want)
		}
	}
	// A 30 MB proposal is refused when 12 MiB have been read: with a 400,
	// or, when the agent closes the connection while the rest is still on
	// its way, with a reset that can overtake the answer.
	code, msg, err := attack(leaderAddr, cfg, "POST", "/cluster/v2/propose", []byte(huge))
	switch {
	case err == nil && (code != http.StatusBadRequest || !strings.Contains(msg, "exceeds")):
		t.Errorf("a 30 MB proposal: got %d %s, want 400", code, strings.TrimSpace(msg))
	case err != nil && !strings.Contains(err.Error(), "reset") && !strings.Contains(err.Error(), "broken pipe"):
		t.Errorf("a 30 MB proposal: %v", err)
	}
	// The forged verdicts changed nothing, and nothing was committed.
	c.agents[l].waitPasses(3)
	st, err = c.agents[l].consistentStatus()
	if err != nil {
		t.Fatal(err)
	}
	if st.Generation != gen {
		t.Errorf("desired generation moved from %d to %d", gen, st.Generation)
	}
	for _, fl := range st.Fleets {
		if fl.Name != "web" {
			t.Errorf("fleet %s appeared", fl.Name)
		}
		for _, in := range fl.Instances {
			if in.ID != victim || in.State != "healthy" {
				t.Errorf("instance %s is %s after forged verdicts", in.ID, in.State)
			}
		}
	}
	if ms, err := c.agents[l].client.Members(context.Background()); err != nil || len(ms) != 3 {
		t.Errorf("members after a forged join: %+v %v", ms, err)
	}
}
