package agent

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/immutd/immutd/internal/config"
	"github.com/immutd/immutd/internal/state"
)

// rpc sends one request to the agent's cluster-port handler as a peer
// with a client certificate (withCert) or without one.
func (ta *testAgent) rpc(method, path string, body any, withCert bool) (int, string) {
	ta.t.Helper()
	var raw string
	switch b := body.(type) {
	case nil:
	case string:
		raw = b
	default:
		out, err := json.Marshal(b)
		if err != nil {
			ta.t.Fatal(err)
		}
		raw = string(out)
	}
	req := httptest.NewRequest(method, path, strings.NewReader(raw))
	if withCert {
		req.TLS = &tls.ConnectionState{PeerCertificates: []*x509.Certificate{{}}}
	}
	w := httptest.NewRecorder()
	ta.a.rpcHandler().ServeHTTP(w, req)
	return w.Code, w.Body.String()
}

func TestRPCNeedsAClientCertificate(t *testing.T) {
	ta := newAgent(t, agentOpts{})
	ta.waitLeader()
	for _, path := range []string{"/cluster/v1/info", "/cluster/v1/status", "/cluster/v1/stats", "/cluster/v1/members"} {
		if code, body := ta.rpc(http.MethodGet, path, nil, false); code != http.StatusForbidden || !strings.Contains(body, "client certificate") {
			t.Fatalf("GET %s without a certificate: %d %s", path, code, body)
		}
	}
	if code, _ := ta.rpc(http.MethodPost, "/cluster/v1/drain", `{"fleet":"web"}`, false); code != http.StatusForbidden {
		t.Fatalf("drain without a certificate: %d", code)
	}
	code, body := ta.rpc(http.MethodGet, "/cluster/v1/info", nil, true)
	var ni NodeInfo
	if code != http.StatusOK || json.Unmarshal([]byte(body), &ni) != nil || ni.ID != ta.a.node.ID() || ni.Name != "node-1" || !ni.HasState {
		t.Fatalf("info: %d %s", code, body)
	}
	code, body = ta.rpc(http.MethodGet, "/cluster/v1/stats", nil, true)
	var ss ServerStats
	if code != http.StatusOK || json.Unmarshal([]byte(body), &ss) != nil || ss.LastIndex == 0 || ss.Name != "node-1" {
		t.Fatalf("stats: %d %s", code, body)
	}
}

func TestRPCBoundsAndChecksEveryBody(t *testing.T) {
	ta := newAgent(t, agentOpts{})
	ta.waitLeader()
	big := `{"fleet":"` + strings.Repeat("a", maxSmallBody) + `"}`
	for _, c := range []struct {
		name, path, body string
		code             int
		want             string
	}{
		{"too big", "/cluster/v1/drain", big, http.StatusBadRequest, "exceeds"},
		{"unknown field", "/cluster/v1/drain", `{"fleet":"web","x":1}`, http.StatusBadRequest, "unknown field"},
		{"trailing data", "/cluster/v1/drain", `{"fleet":"web"} {}`, http.StatusBadRequest, "data after"},
		{"not json", "/cluster/v1/resolve", `fleet=web`, http.StatusBadRequest, "decode request"},
		{"bad fleet name", "/cluster/v1/drain", `{"fleet":"../etc"}`, http.StatusBadRequest, "not a fleet name"},
		{"bad fleet name on resolve", "/cluster/v1/resolve", `{"fleet":""}`, http.StatusBadRequest, "not a fleet name"},
		{"unknown fleet", "/cluster/v1/drain", `{"fleet":"nope"}`, http.StatusConflict, "nope"},
		{"old proposal", "/cluster/v1/propose", `{}`, http.StatusGone, "newer release"},
		{"bad join id", "/cluster/v1/join", `{"id":"a b","addr":"127.0.0.1:1"}`, http.StatusBadRequest, "not a server id"},
		{"bad join addr", "/cluster/v1/join", `{"id":"x","addr":"nowhere"}`, http.StatusBadRequest, "addr"},
		{"remove of nobody", "/cluster/v1/remove", `{"node":"ghost"}`, http.StatusConflict, "no server"},
		{"remove of a bad name", "/cluster/v1/remove", `{"node":"a b/c"}`, http.StatusConflict, "neither"},
		{"remove of itself", "/cluster/v1/remove", `{"node":"node-1"}`, http.StatusConflict, "this agent leads"},
	} {
		code, body := ta.rpc(http.MethodPost, c.path, c.body, true)
		if code != c.code || !strings.Contains(body, c.want) {
			t.Errorf("%s: %d %s, want %d with %q", c.name, code, body, c.code, c.want)
		}
	}
}

func TestRPCVerdictsCountOnlyFromOtherVoters(t *testing.T) {
	ta := newAgent(t, agentOpts{})
	ta.waitLeader()
	for _, c := range []struct {
		name string
		rep  VerdictReport
		code int
		want string
	}{
		{"own id", VerdictReport{NodeID: ta.a.node.ID()}, http.StatusForbidden, "own node id"},
		{"stranger", VerdictReport{NodeID: "intruder", NodeName: strings.Repeat("n", 500)}, http.StatusForbidden, "not a voter"},
	} {
		code, body := ta.rpc(http.MethodPost, "/cluster/v1/verdicts", c.rep, true)
		if code != c.code || !strings.Contains(body, c.want) {
			t.Errorf("%s: %d %s", c.name, code, body)
		}
	}
	if !ta.logged("verdict report refused: not a voter") {
		t.Fatal("a stranger's report was not logged")
	}
}

func TestRPCProposalIsValidatedAsFleetFiles(t *testing.T) {
	ta := newAgent(t, agentOpts{})
	ta.waitLeader()
	good := []config.File{{Name: "web.hcl", Content: []byte("fleet \"web\" {\n" + webFleet(1, "app:v1") + "\n}\n")}}
	bad := []config.File{{Name: "web.hcl", Content: []byte("fleet \"web\" {\n  size = -1\n}\n")}}
	id := ta.a.node.ID()
	p := func(mut func(*Proposal)) *Proposal {
		pr := &Proposal{ProposerID: id, ProposerName: "node-1", Dir: ta.fleets, Files: good, Hash: config.HashFleetFiles(good)}
		mut(pr)
		return pr
	}
	for _, c := range []struct {
		name string
		p    *Proposal
		code int
		want string
	}{
		{"stranger", p(func(p *Proposal) { p.ProposerID = "intruder" }), http.StatusForbidden, "not a server"},
		{"bad name", p(func(p *Proposal) { p.ProposerName = "bad name!" }), http.StatusBadRequest, "not a node name"},
		{"relative dir", p(func(p *Proposal) { p.Dir = "fleets" }), http.StatusBadRequest, "clean absolute path"},
		{"unclean dir", p(func(p *Proposal) { p.Dir = ta.fleets + "/../x" }), http.StatusBadRequest, "clean absolute path"},
		{"wrong hash", p(func(p *Proposal) { p.Hash = "abc" }), http.StatusBadRequest, "does not match"},
		{"long start hash", p(func(p *Proposal) { p.StartHash = strings.Repeat("a", 200) }), http.StatusBadRequest, "start hash"},
		{"invalid files", p(func(p *Proposal) { p.Files, p.Hash = bad, config.HashFleetFiles(bad) }), http.StatusUnprocessableEntity, "size"},
	} {
		code, body := ta.rpc(http.MethodPost, "/cluster/v2/propose", c.p, true)
		if code != c.code || !strings.Contains(body, c.want) {
			t.Errorf("%s: %d %s, want %d with %q", c.name, code, body, c.code, c.want)
		}
	}
	var fleets int
	ta.a.node.Read(func(st *state.State) { fleets = len(st.Fleets) })
	if fleets != 0 {
		t.Fatalf("a refused proposal committed %d fleets", fleets)
	}
	if code, body := ta.rpc(http.MethodPost, "/cluster/v2/propose", p(func(*Proposal) {}), true); code != http.StatusOK {
		t.Fatalf("a valid proposal: %d %s", code, body)
	}
	ta.a.node.Read(func(st *state.State) { fleets = len(st.Fleets) })
	if fleets != 1 {
		t.Fatalf("a valid proposal committed %d fleets", fleets)
	}
}
