package main

import (
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/immutd/immutd/internal/api"
	"github.com/immutd/immutd/internal/pki"
	"github.com/immutd/immutd/internal/state"
)

// testToken is the API token of the fake agent.
const testToken = "0123456789abcdef-test"

// fakeAgent imitates an agent's API with the wire types of internal/api.
type fakeAgent struct {
	srv     *httptest.Server
	status  api.Status
	events  []state.Event
	members []api.Member

	mu       sync.Mutex
	requests []string // "POST /v1/fleets/web/drain?"
	// sawAfter is closed when an events request asks for events after
	// the last one, that is when every event has been printed.
	sawAfter     chan struct{}
	sawAfterOnce sync.Once
}

func newFakeAgent(t *testing.T) *fakeAgent {
	t.Helper()
	a := &fakeAgent{sawAfter: make(chan struct{})}
	a.srv = httptest.NewServer(a.handler())
	t.Cleanup(a.srv.Close)
	return a
}

func (a *fakeAgent) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) { reply(w, 200, a.status) })
	mux.HandleFunc("GET /v1/events", func(w http.ResponseWriter, r *http.Request) {
		after, _ := strconv.ParseUint(r.URL.Query().Get("after"), 10, 64)
		limit, _ := strconv.Atoi(r.URL.Query().Get("limit"))
		evs := []state.Event{}
		for _, e := range a.events {
			if e.Seq > after && len(evs) < limit {
				evs = append(evs, e)
			}
		}
		if n := len(a.events); n > 0 && after >= a.events[n-1].Seq {
			a.sawAfterOnce.Do(func() { close(a.sawAfter) })
		}
		reply(w, 200, evs)
	})
	mux.HandleFunc("GET /v1/cluster/members", func(w http.ResponseWriter, r *http.Request) { reply(w, 200, a.members) })
	mux.HandleFunc("POST /v1/fleets/{name}/{verb}", a.auth(func(w http.ResponseWriter, r *http.Request) {
		if name := r.PathValue("name"); name != "old" {
			reply(w, http.StatusConflict, api.Error{Error: fmt.Sprintf("fleet %q is still configured", name)})
			return
		}
		reply(w, 200, map[string]string{})
	}))
	mux.HandleFunc("POST /v1/cluster/{verb}", a.auth(func(w http.ResponseWriter, r *http.Request) { reply(w, 200, map[string]string{}) }))
	return mux
}

// auth requires the token as the agent does, with its message.
func (a *fakeAgent) auth(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		a.mu.Lock()
		a.requests = append(a.requests, r.Method+" "+r.URL.EscapedPath()+"?"+r.URL.RawQuery)
		a.mu.Unlock()
		if r.Header.Get("Authorization") != "Bearer "+testToken {
			reply(w, http.StatusUnauthorized, api.Error{Error: "this request changes state and needs the API token (Authorization: Bearer ...): pass -token-file /var/lib/immutd/api-token or set IMMUTD_TOKEN_FILE"})
			return
		}
		h(w, r)
	}
}

func (a *fakeAgent) requested() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]string(nil), a.requests...)
}

func reply(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

// writeSecret writes a file with the given mode (whatever the umask).
func writeSecret(t *testing.T, name, content string, mode os.FileMode) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
	return p
}

// hostileStatus is a status in which every string the CLI prints is
// hostile.
func hostileStatus() api.Status {
	now := time.Now()
	ev := state.Event{Seq: 1, Time: now, Fleet: evil("fleet"), InstanceID: evil("inst"), Action: state.EventAction(evil("terminated")), Reason: evil("reason"),
		Evidence: []string{evil("evidence-1"), evil("evidence-2")}, Node: evil("node"), OpID: evil("op")}
	return api.Status{
		Node: evil("node"), Leader: evil("leader"), Stale: true, Diverged: true, SourceNode: evil("source"), LastContact: evil("1s"),
		Version: evil("v"),
		Config:  api.ConfigStatus{At: now, Error: evil("web.hcl:1:1: first") + "\n" + evil("web.hcl:2:1: second")},
		Fleets: []api.Fleet{{
			Name: evil("web"), Provider: evil("local"), Image: evil("/img"), ImageDigest: evil("sha256:0123456789abcdef"),
			ResolveError: evil("resolve"), Desired: 2, States: map[string]int{"healthy": 1},
			Blocked: []api.Block{{Cause: evil("cause"), Detail: evil("detail")}},
			Instances: []api.Instance{{
				ID: evil("web-1"), Fleet: evil("web"), ImageDigest: evil("sha256:ff"), State: evil("unhealthy"), Address: evil("127.0.0.1:1"),
				CreatedAt: now, Intent: evil("intent"), Evidence: []string{evil("probe")}, Drift: []string{evil("drift")},
				FailingOn: []string{evil("a1")}, HealthyOn: []string{evil("a2")},
			}},
		}, {Name: evil("gone"), Unconfigured: true}},
		Events: []state.Event{ev},
	}
}

// TestHostileValuesAreEscaped: names, ids, evidence and messages from
// the agent full of control characters reach neither the terminal raw
// nor a second line, in status, events and cluster members, and the
// JSON output decodes to what the agent sent.
func TestHostileValuesAreEscaped(t *testing.T) {
	a := newFakeAgent(t)
	a.status = hostileStatus()
	a.events = a.status.Events
	yes := true
	a.members = []api.Member{{ID: evil("id"), Name: evil("name"), Address: evil("10.0.0.1:7980"), Suffrage: evil("voter"), Healthy: &yes, LastContact: evil("1s")}}

	for _, args := range [][]string{{"status"}, {"events"}, {"cluster", "members"}} {
		code, out, errOut := runCLI(t, append(args, "-addr", a.srv.URL)...)
		if code != 0 || errOut != "" {
			t.Fatalf("%q: exit %d: %s", args, code, errOut)
		}
		assertNoRawControls(t, strings.Join(args, " "), out, false)
		for _, line := range strings.Split(out, "\n") {
			if strings.HasPrefix(line, "|") || strings.HasPrefix(line, `\t|`) {
				t.Errorf("%q: a value's newline started a line: %q", args, line)
			}
		}
		// (Invalid UTF-8 arrives as U+FFFD: JSON cannot carry it.)
		for _, want := range []string{`\x1b[2J`, `\r`, `\n`, `\t`, `\u009b`, `\u202e`, `\x7f`} {
			if !strings.Contains(out, want) {
				t.Errorf("%q: output lacks the escape %s:\n%s", args, want, out)
			}
		}
	}
	// The status layout stays: one line per problem of the fleet files.
	_, out, _ := runCLI(t, "status", "-addr", a.srv.URL)
	for _, want := range []string{"\n  web.hcl:1:1: first<", "\n  web.hcl:2:1: second<", "\nFLEET ", "\nINSTANCE ", "\nRECENT EVENTS\n", "NOT CONFIGURED: kept running; `immutd fleet drain gone<"} {
		if !strings.Contains(out, want) {
			t.Errorf("status output lacks %q:\n%s", want, out)
		}
	}

	// -json: what the agent's JSON decodes to, escaped for a terminal.
	decode := func(v, into any) {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(b, into); err != nil {
			t.Fatal(err)
		}
	}
	var sent, got api.Status
	decode(a.status, &sent)
	code, out, errOut := runCLI(t, "status", "-json", "-addr", a.srv.URL)
	if code != 0 || errOut != "" {
		t.Fatalf("status -json: exit %d: %s", code, errOut)
	}
	assertNoRawControls(t, "status -json", out, false)
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("status -json is not JSON: %v\n%s", err, out)
	}
	if !reflect.DeepEqual(got, sent) {
		t.Errorf("status -json decodes to\n%+v\nwant\n%+v", got, sent)
	}

	code, out, _ = runCLI(t, "events", "-json", "-addr", a.srv.URL)
	assertNoRawControls(t, "events -json", out, false)
	var sentEv, gotEv state.Event
	decode(a.events[0], &sentEv)
	if err := json.Unmarshal([]byte(out), &gotEv); code != 0 || err != nil || !reflect.DeepEqual(gotEv, sentEv) {
		t.Errorf("events -json: exit %d, %v: decodes to %+v, want %+v", code, err, gotEv, sentEv)
	}

	// An event without evidence says so with [], never null or nothing.
	a.events = append(a.events, state.Event{Seq: 99, Action: "leader_ready"})
	code, out, _ = runCLI(t, "events", "-json", "-addr", a.srv.URL)
	if last := out[strings.LastIndex(strings.TrimSpace(out), "\n")+1:]; code != 0 || !strings.Contains(last, `"evidence":[]`) {
		t.Errorf("events -json of an event without evidence: exit %d: %s", code, last)
	}

	code, out, _ = runCLI(t, "cluster", "members", "-json", "-addr", a.srv.URL)
	assertNoRawControls(t, "cluster members -json", out, false)
	var sentMs, gotMs []api.Member
	decode(a.members, &sentMs)
	if err := json.Unmarshal([]byte(out), &gotMs); code != 0 || err != nil || !reflect.DeepEqual(gotMs, sentMs) {
		t.Errorf("cluster members -json: exit %d, %v: decodes to %+v", code, err, gotMs)
	}
}

// TestHostileStatusLine: the one part of an answer that is not JSON,
// the status line, is escaped too, invalid UTF-8 included.
func TestHostileStatusLine(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		buf := make([]byte, 4096)
		_, _ = c.Read(buf)
		_, _ = io.WriteString(c, "HTTP/1.1 418 tea\x1b[2J\xff\u009b\u202e\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
	}()
	code, out, errOut := runCLI(t, "status", "-addr", l.Addr().String())
	if want := `immutd status: 418 tea\x1b[2J\xff\u009b\u202e` + "\n"; code != 1 || out != "" || errOut != want {
		t.Errorf("exit %d, stdout %q, stderr %q, want %q", code, out, errOut, want)
	}
}

// TestStateChangesReachTheAgent: flags before or after the argument, the
// token sent, and the argument in the path or query as given.
func TestStateChangesReachTheAgent(t *testing.T) {
	a := newFakeAgent(t)
	token := writeSecret(t, "token", testToken+"\n", 0o600)
	tests := []struct {
		args    []string
		request string
		out     string
	}{
		{[]string{"fleet", "drain", "old", "-addr", a.srv.URL, "-token-file", token}, "POST /v1/fleets/old/drain?", "fleet old is draining"},
		{[]string{"fleet", "drain", "-addr", a.srv.URL, "-token-file", token, "old"}, "POST /v1/fleets/old/drain?", "fleet old is draining"},
		{[]string{"fleet", "resolve", "-addr", a.srv.URL, "old", "-token-file=" + token}, "POST /v1/fleets/old/resolve?", "fleet old: image reference pinned again"},
		{[]string{"cluster", "join", "-addr", a.srv.URL, "-token-file", token, "--", "10.0.0.2:7980"}, "POST /v1/cluster/join?addr=10.0.0.2%3A7980", "cluster join: done"},
		{[]string{"cluster", "remove", "agent-2", "--addr", a.srv.URL, "--token-file", token}, "POST /v1/cluster/remove?node=agent-2", "cluster remove: done"},
		{[]string{"cluster", "leave", "-addr", a.srv.URL, "-token-file", token}, "POST /v1/cluster/leave?", "cluster leave: done"},
	}
	for i, tt := range tests {
		code, out, errOut := runCLI(t, tt.args...)
		reqs := a.requested()
		if code != 0 || errOut != "" || !strings.Contains(out, tt.out) || len(reqs) != i+1 || reqs[i] != tt.request {
			t.Errorf("%q: exit %d, stdout %q, stderr %q, requests %q, want %q", tt.args, code, out, errOut, reqs, tt.request)
		}
	}
	// The environment gives the defaults.
	t.Setenv("IMMUTD_ADDR", a.srv.URL)
	t.Setenv("IMMUTD_TOKEN_FILE", token)
	if code, out, errOut := runCLI(t, "fleet", "drain", "old"); code != 0 || !strings.Contains(out, "draining") {
		t.Errorf("with IMMUTD_ADDR and IMMUTD_TOKEN_FILE: exit %d: %s%s", code, out, errOut)
	}
}

// freeAddr is a loopback address nothing listens on.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// answering is an agent that answers every request with code and body.
func answering(t *testing.T, code int, body string) string {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(code)
		fmt.Fprint(w, body)
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

// TestErrorsAreOneHelpfulLine: connection, TLS and error answers are
// each one line that names the agent's address once and says what to do.
func TestErrorsAreOneHelpfulLine(t *testing.T) {
	token := writeSecret(t, "token", testToken, 0o600)
	wrongToken := writeSecret(t, "wrong", "wrong-token-0123456789", 0o600)
	a := newFakeAgent(t)

	tlsAgent := httptest.NewUnstartedServer(a.handler())
	tlsAgent.Config.ErrorLog = log.New(io.Discard, "", 0) // the refused handshakes are the point
	tlsAgent.StartTLS()
	t.Cleanup(tlsAgent.Close)
	goodCA := writeSecret(t, "ca.pem", string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: tlsAgent.Certificate().Raw})), 0o644)
	otherCAPEM, _, err := pki.NewCA("other CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	otherCA := writeSecret(t, "other.pem", string(otherCAPEM), 0o644)
	notPEM := writeSecret(t, "not.pem", "hello", 0o644)
	httpsToPlain := "https://" + strings.TrimPrefix(a.srv.URL, "http://")
	plainToHTTPS := "http://" + strings.TrimPrefix(tlsAgent.URL, "https://")

	refused := freeAddr(t)
	tests := []struct {
		name string
		args []string
		want string // the whole line, after "immutd COMMAND: "
	}{
		{"no agent", []string{"status", "-addr", refused},
			"cannot reach the immutd agent at " + refused + " (connection refused): is it running? Set -addr or IMMUTD_ADDR to its API address."},
		{"no agent, https", []string{"status", "-addr", "https://" + refused},
			"cannot reach the immutd agent at https://" + refused + " (connection refused): is it running? Set -addr or IMMUTD_ADDR to its API address."},
		{"bad address", []string{"status", "-addr", "http://[::1"},
			"-addr http://[::1 is not an address or URL: missing ']' in host"},
		{"unknown CA", []string{"status", "-addr", tlsAgent.URL},
			"cannot verify the TLS certificate of the immutd agent at " + tlsAgent.URL + " (x509: certificate signed by unknown authority): set -ca-file or IMMUTD_CA_FILE to the CA certificate that signed the agent's API certificate"},
		{"wrong CA", []string{"status", "-addr", tlsAgent.URL, "-ca-file", otherCA},
			"cannot verify the TLS certificate of the immutd agent at " + tlsAgent.URL + " (x509: certificate signed by unknown authority): it is not signed by the CA in " + otherCA + " (-ca-file or IMMUTD_CA_FILE)"},
		{"CA file without a certificate", []string{"status", "-addr", tlsAgent.URL, "-ca-file", notPEM},
			"-ca-file: " + notPEM + ": no PEM certificate"},
		{"https to a plain agent", []string{"status", "-addr", httpsToPlain},
			"the immutd agent at " + httpsToPlain + " does not answer with TLS: use an http:// address in -addr or IMMUTD_ADDR, or give the agent's api block tls_cert_file and tls_key_file"},
		{"http to an https agent", []string{"status", "-addr", plainToHTTPS},
			"400 Bad Request; if the agent's API uses TLS, use an https:// address with -ca-file"},
		{"no token", []string{"fleet", "drain", "old", "-addr", a.srv.URL},
			"401 Unauthorized: this request changes state and needs the API token (Authorization: Bearer ...): pass -token-file /var/lib/immutd/api-token or set IMMUTD_TOKEN_FILE; no API token was sent: -token-file or IMMUTD_TOKEN_FILE passes it"},
		{"wrong token", []string{"cluster", "leave", "-addr", a.srv.URL, "-token-file", wrongToken},
			"401 Unauthorized: this request changes state and needs the API token (Authorization: Bearer ...): pass -token-file /var/lib/immutd/api-token or set IMMUTD_TOKEN_FILE; the token in " + wrongToken + " was refused"},
		{"refused with a message", []string{"fleet", "drain", "web", "-addr", a.srv.URL, "-token-file", token},
			`409 Conflict: fleet "web" is still configured`},
		{"hostile message", []string{"status", "-addr", answering(t, 503, `{"error":"no leader\u001b[2J\r\n\u009b\u202e"}`)},
			`503 Service Unavailable: no leader\x1b[2J\r\n\u009b\u202e`},
		{"answer without a message", []string{"status", "-addr", answering(t, 500, "oops")},
			"500 Internal Server Error"},
		{"not an agent", []string{"status", "-addr", answering(t, 200, "<html>")},
			"GET /v1/status: decode: invalid character '<' looking for beginning of value"},
		{"good CA", []string{"fleet", "drain", "old", "-addr", tlsAgent.URL, "-ca-file", goodCA, "-token-file", token}, ""},
	}
	for _, tt := range tests {
		code, out, errOut := runCLI(t, tt.args...)
		c, _ := lookup(tt.args)
		if tt.want == "" {
			if code != 0 || errOut != "" {
				t.Errorf("%s: exit %d, stderr %q", tt.name, code, errOut)
			}
			continue
		}
		want := "immutd " + c.name + ": " + tt.want + "\n"
		if code != 1 || out != "" || errOut != want {
			t.Errorf("%s: exit %d, stdout %q\nstderr %q\nwant   %q", tt.name, code, out, errOut, want)
		}
	}
}

// TestTokenFile: the token file is read as the agent reads it, and a
// file that is refused is named with the fix.
func TestTokenFile(t *testing.T) {
	a := newFakeAgent(t)
	dir := t.TempDir()
	tests := []struct {
		name string
		path string
		want string // in stderr; "" for success
	}{
		{"owner only", writeSecret(t, "t", "  "+testToken+"\n\n", 0o600), ""},
		{"read-only", writeSecret(t, "t", testToken, 0o400), ""},
		{"group-readable", writeSecret(t, "t", testToken, 0o640), "permissions are too open"},
		{"world-readable", writeSecret(t, "t", testToken, 0o644), "chmod 600 "},
		{"too short", writeSecret(t, "t", "short", 0o600), "the token is shorter than 16 characters"},
		{"two lines", writeSecret(t, "t", testToken+"\n"+testToken, 0o600), "the token must be one line of printable characters without spaces"},
		{"control character", writeSecret(t, "t", testToken+"\x1b[2J", 0o600), "the token must be one line"},
		{"too large", writeSecret(t, "t", strings.Repeat("x", 4097), 0o600), "is 4097 bytes; a secret file holds at most 4096"},
		{"missing", filepath.Join(dir, "absent"), "no such file or directory"},
		{"directory", dir, "is a directory, not a regular file"},
	}
	for _, tt := range tests {
		code, out, errOut := runCLI(t, "fleet", "drain", "old", "-addr", a.srv.URL, "-token-file", tt.path)
		if tt.want == "" {
			if code != 0 || !strings.Contains(out, "draining") {
				t.Errorf("%s: exit %d: %s", tt.name, code, errOut)
			}
			continue
		}
		if code != 1 || !strings.Contains(errOut, tt.want) || !strings.Contains(errOut, tt.path) || strings.Count(errOut, "\n") != 1 {
			t.Errorf("%s: exit %d, stderr %q, want it to name %s and say %q", tt.name, code, errOut, tt.path, tt.want)
		}
	}
	if len(a.requested()) != 2 {
		t.Errorf("refused token files reached the agent: %q", a.requested())
	}
	// The fix is spelled out for a file that is too open.
	p := writeSecret(t, "open", testToken, 0o644)
	if _, _, errOut := runCLI(t, "fleet", "drain", "old", "-addr", a.srv.URL, "-token-file", p); !strings.Contains(errOut, "(chmod 600 "+p+")") {
		t.Errorf("no chmod advice: %s", errOut)
	}
}

// TestEventsFollowStopsOnSignal: events -follow keeps printing new
// events until SIGINT, then exits 0.
func TestEventsFollowStopsOnSignal(t *testing.T) {
	defer func(d time.Duration) { followInterval = d }(followInterval)
	followInterval = 5 * time.Millisecond
	a := newFakeAgent(t)
	now := time.Now()
	a.events = []state.Event{
		{Seq: 1, Time: now, Fleet: "web", InstanceID: "web-1", Action: "launched", Reason: "missing"},
		{Seq: 2, Time: now, Fleet: "web", InstanceID: "web-0", Action: "terminated", Reason: "unhealthy", Evidence: []string{"http ready: 503"}},
	}
	type result struct {
		code     int
		out, err string
	}
	done := make(chan result, 1)
	go func() {
		code, out, errOut := runCLI(t, "events", "-follow", "-n", "1", "-addr", a.srv.URL)
		done <- result{code, out, errOut}
	}()
	select {
	case <-a.sawAfter: // both events printed; the loop asks for more
	case r := <-done:
		t.Fatalf("events -follow ended by itself: exit %d: %s", r.code, r.err)
	case <-time.After(10 * time.Second):
		t.Fatal("events -follow did not ask for new events")
	}
	if err := syscall.Kill(os.Getpid(), syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-done:
		if r.code != 0 || r.err != "" || !strings.Contains(r.out, "web-1") || !strings.Contains(r.out, "http ready: 503") {
			t.Errorf("exit %d, stdout %q, stderr %q", r.code, r.out, r.err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("events -follow did not stop on SIGINT")
	}
}
