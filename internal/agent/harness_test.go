package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/immutd/immutd/internal/api"
	"github.com/immutd/immutd/internal/config"
	"github.com/immutd/immutd/internal/pki"
	"github.com/immutd/immutd/internal/provider/fake"
	"github.com/immutd/immutd/internal/reconcile"
	"github.com/immutd/immutd/internal/state"
)

// The agent's unit tests run whole agents in this process: real config
// files, real raft on loopback, the real API and cluster port, and a fake
// provider (internal/provider/fake) registered under the name fleet files
// use. Every wait is on a condition, never on a sleep.

// testAgent is one agent running in the test process.
type testAgent struct {
	t      *testing.T
	a      *Agent
	name   string
	dir    string // the agent's base directory
	fleets string // its fleets directory
	conf   string // its agent.hcl
	prov   *fake.Provider
	logs   *observer.ObservedLogs
	reload chan struct{}
	cancel context.CancelFunc
	done   chan error
}

type agentOpts struct {
	name string
	// fleets is a fleets directory to share; empty makes one.
	fleets string
	// raftAddr is the cluster address; empty picks a free port.
	raftAddr string
	// cluster is the body of the cluster block (bind_addr is added).
	cluster string
	// extra is appended to agent.hcl.
	extra string
	// prov is the fake provider; nil makes one.
	prov *fake.Provider
}

// freePort returns a loopback port no other caller of this process got.
var usedPorts sync.Map

func freePort(t testing.TB) int {
	t.Helper()
	for {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := ln.Addr().(*net.TCPAddr).Port
		ln.Close()
		if _, taken := usedPorts.LoadOrStore(port, true); !taken {
			return port
		}
	}
}

// newAgent writes an agent configuration and starts the agent.
func newAgent(t *testing.T, o agentOpts) *testAgent {
	t.Helper()
	if o.name == "" {
		o.name = "node-1"
	}
	dir := t.TempDir()
	ta := &testAgent{t: t, name: o.name, dir: dir, fleets: o.fleets, conf: filepath.Join(dir, "agent.hcl"), prov: o.prov}
	if ta.fleets == "" {
		ta.fleets = filepath.Join(dir, "fleets.d")
	}
	if err := os.MkdirAll(ta.fleets, 0o755); err != nil {
		t.Fatal(err)
	}
	if o.raftAddr == "" {
		o.raftAddr = fmt.Sprintf("127.0.0.1:%d", freePort(t))
	}
	if ta.prov == nil {
		ta.prov = fake.New("sha256:" + strings.Repeat("a", 64))
		ta.prov.Serve = true
		t.Cleanup(ta.prov.Close)
	}
	ta.write(fmt.Sprintf(`node_name  = %q
data_dir   = "data"
fleets_dir = %q
http_addr  = "127.0.0.1:%d"
log_level  = "debug"
reconcile_interval = "1s"

cluster {
  bind_addr = %q
%s
}
%s
`, o.name, ta.fleets, freePort(t), o.raftAddr, o.cluster, o.extra))
	ta.start()
	return ta
}

func (ta *testAgent) write(conf string) {
	ta.t.Helper()
	if err := os.WriteFile(ta.conf, []byte(conf), 0o644); err != nil {
		ta.t.Fatal(err)
	}
}

// start loads the configuration and runs the agent until the test ends.
func (ta *testAgent) start() {
	t := ta.t
	t.Helper()
	cfg, err := config.LoadAgent(ta.conf)
	if err != nil {
		t.Fatal(err)
	}
	core, logs := observer.New(zap.DebugLevel)
	ta.logs = logs
	a, err := NewWith(cfg, zap.New(core).With(zap.String("agent", ta.name)), zap.NewAtomicLevelAt(zap.DebugLevel),
		Options{Providers: map[string]reconcile.Provider{config.ProviderDocker: ta.prov}})
	if err != nil {
		t.Fatal(err)
	}
	ta.a = a
	ctx, cancel := context.WithCancel(context.Background())
	ta.cancel, ta.done, ta.reload = cancel, make(chan error, 1), make(chan struct{}, 1)
	go func() { ta.done <- a.Run(ctx, ta.reload) }()
	select {
	case <-a.Started():
	case err := <-ta.done:
		t.Fatalf("agent %s did not start: %v", ta.name, err)
	}
	t.Cleanup(func() { ta.stop() })
}

// stop stops the agent and waits for Run to return (once).
func (ta *testAgent) stop() error {
	if ta.cancel == nil {
		return nil
	}
	ta.cancel()
	ta.cancel = nil
	select {
	case err := <-ta.done:
		return err
	case <-time.After(2 * time.Minute):
		ta.t.Errorf("agent %s did not stop", ta.name)
		return nil
	}
}

// waitFor polls cond until it holds; the limit only bounds a broken test.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// logged says whether the agent logged a message containing msg.
func (ta *testAgent) logged(msg string) bool {
	return ta.logs.FilterMessageSnippet(msg).Len() > 0
}

func (ta *testAgent) waitLeader() {
	ta.t.Helper()
	waitFor(ta.t, ta.name+" to lead and finish a pass", func() bool { return ta.a.Ready() == nil && ta.a.node.IsLeader() })
}

// fleet writes a fleet file; body is the fleet block's body.
func (ta *testAgent) fleet(name, body string) {
	ta.t.Helper()
	writeFleet(ta.t, ta.fleets, name, body)
}

func writeFleet(t testing.TB, dir, name, body string) {
	t.Helper()
	p := filepath.Join(dir, name+".hcl")
	tmp := p + ".tmp"
	if err := os.WriteFile(tmp, []byte(fmt.Sprintf("fleet %q {\n%s\n}\n", name, body)), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, p); err != nil {
		t.Fatal(err)
	}
}

// webFleet is a fleet of size n whose instances are judged by HTTP.
func webFleet(n int, image string) string {
	return fmt.Sprintf(`  size     = %d
  provider = %q
  image    = %q
  health {
    http "ready" {
      path                = "/healthz"
      interval            = "1s"
      timeout             = "1s"
      healthy_threshold   = 1
      unhealthy_threshold = 1
      startup_timeout     = "30s"
    }
  }
  rollout {
    max_surge       = 1
    max_unavailable = 0
  }`, n, config.ProviderDocker, image)
}

// status is the agent's status.
func (ta *testAgent) status() api.Status { return ta.a.Status(context.Background()) }

// fleetStatus returns the named fleet of the agent's status.
func (ta *testAgent) fleetStatus(name string) (api.Fleet, bool) {
	for _, f := range ta.status().Fleets {
		if f.Name == name {
			return f, true
		}
	}
	return api.Fleet{}, false
}

// healthyCount is how many instances of a fleet the leader sees healthy.
func (ta *testAgent) healthyCount(fleet string) int {
	f, ok := ta.fleetStatus(fleet)
	if !ok || ta.status().Stale {
		return -1
	}
	return f.States["healthy"]
}

// events returns the recorded events with the given action.
func (ta *testAgent) events(action string) []state.Event {
	var out []state.Event
	for _, e := range ta.a.Events(context.Background(), 0, "", 0) {
		if string(e.Action) == action {
			out = append(out, e)
		}
	}
	return out
}

// call sends an API request with the agent's token (when auth is set)
// and returns the status code and body.
func (ta *testAgent) call(method, path, body string, auth bool) (int, string) {
	ta.t.Helper()
	var r io.Reader
	if body != "" {
		r = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, "http://"+ta.a.HTTPAddr()+path, r)
	if err != nil {
		ta.t.Fatal(err)
	}
	if auth {
		req.Header.Set("Authorization", "Bearer "+ta.a.Token())
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		ta.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// getJSON decodes a GET of the API into v.
func (ta *testAgent) getJSON(path string, v any) {
	ta.t.Helper()
	code, body := ta.call(http.MethodGet, path, "", false)
	if code != http.StatusOK {
		ta.t.Fatalf("GET %s: %d %s", path, code, body)
	}
	if err := json.Unmarshal([]byte(body), v); err != nil {
		ta.t.Fatalf("GET %s: %v in %s", path, err, body)
	}
}

// makeCerts writes a CA and a certificate per name into dir and returns
// the tls block of each name.
func makeCerts(t testing.TB, dir string, names ...string) map[string]string {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	caCert, caKey, err := pki.NewCA("agent test CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := pki.WriteFiles(dir, "ca", caCert, caKey); err != nil {
		t.Fatal(err)
	}
	blocks := map[string]string{}
	for _, n := range names {
		c, k, err := pki.NewCert(caCert, caKey, n, []string{config.DefaultTLSServerName, n}, []net.IP{net.ParseIP("127.0.0.1")}, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		if err := pki.WriteFiles(dir, n, c, k); err != nil {
			t.Fatal(err)
		}
		blocks[n] = fmt.Sprintf("  tls {\n    ca_file = %q\n    cert_file = %q\n    key_file = %q\n  }",
			filepath.Join(dir, "ca.pem"), filepath.Join(dir, n+".pem"), filepath.Join(dir, n+"-key.pem"))
	}
	return blocks
}

// newCluster starts n agents that form one cluster over mutual TLS and
// share a fleets directory; it returns them once one leads.
func newCluster(t *testing.T, n int) []*testAgent {
	t.Helper()
	base := t.TempDir()
	fleets := filepath.Join(base, "fleets.d")
	var names, addrs, quoted []string
	for i := range n {
		names = append(names, "node-"+strconv.Itoa(i+1))
		addrs = append(addrs, fmt.Sprintf("127.0.0.1:%d", freePort(t)))
		quoted = append(quoted, strconv.Quote(addrs[i]))
	}
	tls := makeCerts(t, filepath.Join(base, "tls"), names...)
	prov := fake.New("sha256:" + strings.Repeat("b", 64))
	prov.Serve = true
	t.Cleanup(prov.Close)
	var agents []*testAgent
	for i, name := range names {
		agents = append(agents, newAgent(t, agentOpts{name: name, fleets: fleets, raftAddr: addrs[i], prov: prov,
			cluster: fmt.Sprintf("  bootstrap_expect = %d\n  join = [%s]\n%s", n, strings.Join(quoted, ", "), tls[name])}))
	}
	waitFor(t, "a leader that finished a pass", func() bool { return leaderOf(agents) != nil })
	return agents
}

// leaderOf is the agent that leads and is ready, or nil.
func leaderOf(agents []*testAgent) *testAgent {
	for _, ta := range agents {
		if ta.cancel != nil && ta.a.node.IsLeader() && ta.a.Ready() == nil {
			return ta
		}
	}
	return nil
}

// followerOf is an agent that runs and does not lead.
func followerOf(agents []*testAgent) *testAgent {
	for _, ta := range agents {
		if ta.cancel != nil && !ta.a.node.IsLeader() {
			return ta
		}
	}
	return nil
}
