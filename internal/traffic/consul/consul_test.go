package consul

import (
	"context"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/immutd/immutd/internal/instance"
	"github.com/immutd/immutd/internal/traffic"
	"github.com/immutd/immutd/internal/traffic/consul/consulstandin"
)

func writeFile(t *testing.T, name, content string, mode os.FileMode) string {
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

func testMember() traffic.Member {
	return traffic.Member{Fleet: "web", InstanceID: "web-1a2b", Address: "127.0.0.1:8080", Healthy: true}
}

func TestNewRejects(t *testing.T) {
	token := writeFile(t, "token", "0123456789abcdef0123", 0o600)
	openToken := writeFile(t, "open-token", "0123456789abcdef0123", 0o644)
	shortToken := writeFile(t, "short-token", "short", 0o600)
	openKey := writeFile(t, "key.pem", "not a key", 0o644)
	cert := writeFile(t, "cert.pem", "not a cert", 0o644)
	notPEM := writeFile(t, "ca.pem", "not a certificate", 0o644)
	manyMeta := map[string]string{}
	for i := range 60 {
		manyMeta[fmt.Sprintf("k%d", i)] = "v"
	}
	for _, c := range []struct {
		name string
		mod  func(*Config)
		want string
	}{
		{"no address", func(c *Config) { c.Address = "" }, "consul: address: required"},
		{"scheme", func(c *Config) { c.Address = "ftp://127.0.0.1:8500" }, `consul: address "ftp://127.0.0.1:8500": the scheme must be http or https`},
		{"no port", func(c *Config) { c.Address = "127.0.0.1" }, `consul: address "127.0.0.1": must be host:port`},
		{"path", func(c *Config) { c.Address = "http://127.0.0.1:8500/consul" }, "must be host:port"},
		{"port 0", func(c *Config) { c.Address = "127.0.0.1:0" }, `bad port "0"`},
		{"tls on http", func(c *Config) { c.CAFile = notPEM }, "ca_file, cert_file, key_file and tls_server_name need an https:// address"},
		{"no service", func(c *Config) { c.Service = "" }, "consul: service: required"},
		{"service", func(c *Config) { c.Service = "web_1" }, `consul: service "web_1": must be a DNS label`},
		{"long service", func(c *Config) { c.Service = strings.Repeat("a", 64) }, "must be a DNS label"},
		{"fleet", func(c *Config) { c.Fleet = "a/b" }, `consul: fleet "a/b"`},
		{"tag", func(c *Config) { c.Tags = []string{"ok", ""} }, `consul: tags[1] ""`},
		{"meta key chars", func(c *Config) { c.Meta = map[string]string{"bad key": "v"} }, `consul: meta key "bad key": must be 1-128 ASCII letters`},
		{"meta key length", func(c *Config) { c.Meta = map[string]string{strings.Repeat("k", 129): "v"} }, "must be 1-128 ASCII letters"},
		{"meta reserved", func(c *Config) { c.Meta = map[string]string{"consul-version": "v"} }, "the prefix consul- is reserved by Consul"},
		{"meta own key", func(c *Config) { c.Meta = map[string]string{"immutd-fleet": "v"} }, "immutd sets external-source and the immutd-* keys itself"},
		{"meta source", func(c *Config) { c.Meta = map[string]string{"external-source": "v"} }, "immutd sets external-source"},
		{"meta value", func(c *Config) { c.Meta = map[string]string{"k": strings.Repeat("v", 513)} }, `consul: meta "k": the value has 513 bytes; Consul allows 512`},
		{"meta pairs", func(c *Config) { c.Meta = manyMeta }, "consul: meta: 60 pairs; Consul allows 64 and immutd sets 5 itself, so at most 59"},
		{"ttl", func(c *Config) { c.TTL = 500 * time.Millisecond }, "consul: ttl 500ms: must be at least 1s"},
		{"grace", func(c *Config) { c.Grace = -time.Second }, "consul: grace -1s: must be at least 0s"},
		{"timeout", func(c *Config) { c.Timeout = -time.Second }, "consul: timeout -1s"},
		{"deregister", func(c *Config) { c.DeregisterCriticalAfter = 30 * time.Second }, "consul: deregister_critical_after 30s: Consul's minimum is 1m"},
		{"token missing", func(c *Config) { c.TokenFile = filepath.Join(t.TempDir(), "nope") }, "consul: consul token_file: open"},
		{"token open", func(c *Config) { c.TokenFile = openToken }, "permissions are too open"},
		{"token short", func(c *Config) { c.TokenFile = shortToken }, "the token is shorter than 16 characters"},
		{"cert without key", func(c *Config) { c.Address = "https://127.0.0.1:8501"; c.CertFile = cert }, "consul: cert_file and key_file: set both or neither"},
		{"key open", func(c *Config) { c.Address = "https://127.0.0.1:8501"; c.CertFile, c.KeyFile = cert, openKey }, "consul key_file " + openKey + ": permissions are too open"},
		{"ca not pem", func(c *Config) { c.Address = "https://127.0.0.1:8501"; c.CAFile = notPEM }, "consul: ca_file " + notPEM + ": no PEM certificate in it"},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg := Config{Address: "127.0.0.1:8500", Service: "web", TokenFile: token}
			c.mod(&cfg)
			_, err := New(cfg, nil)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v, want an error containing %q", err, c.want)
			}
		})
	}
}

func TestNewDefaults(t *testing.T) {
	b, err := New(Config{Address: "https://consul.example:8501/", Service: "web"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if b.cfg.TTL != DefaultTTL || b.cfg.Grace != DefaultGrace || b.cfg.Timeout != DefaultTimeout {
		t.Fatalf("defaults: %+v", b.cfg)
	}
	if b.transport.TLSClientConfig.ServerName != "consul.example" {
		t.Fatalf("server name %q", b.transport.TLSClientConfig.ServerName)
	}
}

func TestMemberRejected(t *testing.T) {
	b, err := New(Config{Address: "127.0.0.1:1", Service: "web", Fleet: "web"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	for name, mod := range map[string]func(*traffic.Member){
		"instance id": func(m *traffic.Member) { m.InstanceID = "a/b" },
		"address":     func(m *traffic.Member) { m.Address = "no-port" },
		"port":        func(m *traffic.Member) { m.Address = "127.0.0.1:70000" },
		"fleet":       func(m *traffic.Member) { m.Fleet = "db" },
		"version":     func(m *traffic.Member) { m.Version = strings.Repeat("v", 513) },
	} {
		m := testMember()
		mod(&m)
		// The member is refused before any request (the address is closed).
		err := b.Admit(context.Background(), m)
		if !errors.Is(err, instance.ErrPermanent) || !strings.HasPrefix(err.Error(), "consul: admit ") {
			t.Errorf("%s: %v", name, err)
		}
		if err := b.Sync(context.Background(), []traffic.Member{m}, nil); !errors.Is(err, instance.ErrPermanent) &&
			!errors.Is(err, traffic.ErrUnreachable) {
			t.Errorf("%s: sync: %v", name, err)
		}
	}
}

func TestNextIndex(t *testing.T) {
	for _, c := range []struct{ prev, got, want uint64 }{
		{0, 0, 1},   // an index of 0 would not block: clamp to 1
		{0, 7, 7},   // first read
		{7, 7, 7},   // no change (timeout, idempotent write)
		{7, 9, 9},   // moved on
		{9, 3, 0},   // went backwards: reset
		{9, 0, 0},   // went backwards to 0: reset, then clamp on the next answer
		{0, 3, 3},   // after a reset
		{1, 0, 0},   // backwards
		{0, 1, 1},   // the clamp keeps 1
		{5, 5, 5},   // unchanged
		{5, 6, 6},   // one write
		{2, 1, 0},   // backwards by one
		{1, 1, 1},   // clamp boundary
		{3, 10, 10}, // several writes
	} {
		if got := nextIndex(c.prev, c.got); got != c.want {
			t.Errorf("nextIndex(%d, %d) = %d, want %d", c.prev, c.got, got, c.want)
		}
	}
}

// closedAddress is a loopback address nothing listens on.
func closedAddress(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

func TestUnreachable(t *testing.T) {
	b, err := New(Config{Address: closedAddress(t), Service: "web"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	m := testMember()
	for op, err := range map[string]error{
		"consul: admit web-1a2b: ":  b.Admit(ctx, m),
		"consul: drain web-1a2b: ":  b.Drain(ctx, m),
		"consul: remove web-1a2b: ": b.Remove(ctx, m),
		"consul: sync: ":            b.Sync(ctx, []traffic.Member{m}, nil),
	} {
		if !errors.Is(err, traffic.ErrUnreachable) || !strings.HasPrefix(err.Error(), op) || !strings.Contains(err.Error(), "connection refused") {
			t.Errorf("%s: %v", op, err)
		}
	}
	if _, err := b.CatalogAddresses(ctx, "immutd", ""); !errors.Is(err, traffic.ErrUnreachable) {
		t.Errorf("catalog: %v", err)
	}
	dns, err := New(Config{Address: "consul.invalid:8500", Service: "web"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer dns.Close()
	if err := dns.Sync(ctx, nil, nil); !errors.Is(err, traffic.ErrUnreachable) {
		t.Errorf("unknown host: %v", err)
	}
}

func TestTimeoutIsUnreachable(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer srv.Close()
	defer close(release)
	b, err := New(Config{Address: srv.Listener.Addr().String(), Service: "web", Timeout: 50 * time.Millisecond}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := b.Sync(ctx, nil, nil); !errors.Is(err, traffic.ErrUnreachable) || errors.Is(err, context.Canceled) {
		t.Fatalf("hanging agent: %v", err)
	}
	// The caller's own deadline is not "unreachable".
	short, cancel2 := context.WithCancel(ctx)
	cancel2()
	if err := b.Sync(short, nil, nil); errors.Is(err, traffic.ErrUnreachable) || !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled caller: %v", err)
	}
}

func TestHTTPErrorQuotesStatusAndBoundedBody(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusInternalServerError)
		fmt.Fprint(w, "rpc error: no cluster leader "+strings.Repeat("x", 100_000))
	}))
	defer srv.Close()
	b, err := New(Config{Address: srv.URL, Service: "web"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	err = b.Admit(context.Background(), testMember())
	if err == nil || errors.Is(err, traffic.ErrUnreachable) ||
		!strings.Contains(err.Error(), `consul answered HTTP 500: "rpc error: no cluster leader xxx`) || len(err.Error()) > 1000 {
		t.Fatalf("error answer: %.300v (%d bytes)", err, len(err.Error()))
	}
}

func TestResponseBodyBounded(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, strings.Repeat("x", 4096))
	}))
	defer srv.Close()
	for limit, want := range map[int64]error{4096: nil, 4095: errBodyTooLarge} {
		c := &http.Client{Transport: &boundTransport{base: http.DefaultTransport, limit: limit}}
		resp, err := c.Get(srv.URL)
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if !errors.Is(err, want) || (want == nil && len(b) != 4096) {
			t.Errorf("limit %d: %d bytes, %v; want %v", limit, len(b), err, want)
		}
	}
	// Backends bound their answers with maxResponse.
	b, err := New(Config{Address: srv.URL, Service: "web"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if bt := b.hc.Transport.(*boundTransport); bt.limit != maxResponse {
		t.Fatalf("limit %d", bt.limit)
	}
}

// TestEnvironmentIsIgnored: the CONSUL_* variables the api client reads
// by itself neither add a token nor break New.
func TestEnvironmentIsIgnored(t *testing.T) {
	t.Setenv("CONSUL_HTTP_TOKEN", "leaked-token-0123456789")
	t.Setenv("CONSUL_HTTP_TOKEN_FILE", filepath.Join(t.TempDir(), "missing"))
	t.Setenv("CONSUL_NAMESPACE", "leaked")
	var mu sync.Mutex
	var seen []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen = append(seen, r.Header.Get("X-Consul-Token")+"|"+r.URL.Query().Get("ns"))
		mu.Unlock()
		fmt.Fprint(w, "{}")
	}))
	defer srv.Close()
	token := writeFile(t, "token", "file-token-0123456789", 0o600)
	for _, c := range []struct{ tokenFile, want string }{{"", "|"}, {token, "file-token-0123456789|"}} {
		b, err := New(Config{Address: srv.URL, Service: "web", TokenFile: c.tokenFile}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := b.Sync(context.Background(), nil, nil); err != nil {
			t.Fatal(err)
		}
		b.Close()
		mu.Lock()
		got := seen[len(seen)-1]
		mu.Unlock()
		if got != c.want {
			t.Errorf("token file %q: request carried token|ns %q, want %q", c.tokenFile, got, c.want)
		}
	}
}

func TestTLS(t *testing.T) {
	standin := consulstandin.New(consulstandin.Options{})
	srv := httptest.NewTLSServer(standin)
	defer srv.Close()
	defer standin.Close()
	ca := writeFile(t, "ca.pem", string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})), 0o644)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, c := range []struct {
		name, ca, serverName string
		ok                   bool
	}{
		{"ca", ca, "", true},
		{"server name", ca, "example.com", true}, // httptest's certificate names example.com
		{"system roots", "", "", false},
		{"wrong name", ca, "wrong.example", false},
	} {
		b, err := New(Config{Address: srv.URL, Service: "web", CAFile: c.ca, TLSServerName: c.serverName}, nil)
		if err != nil {
			t.Fatal(err)
		}
		err = b.Admit(ctx, testMember())
		b.Close()
		if c.ok && err != nil {
			t.Errorf("%s: %v", c.name, err)
		}
		if !c.ok && (err == nil || errors.Is(err, traffic.ErrUnreachable) || !strings.Contains(err.Error(), "tls: ")) {
			t.Errorf("%s: want a TLS error that is not unreachable, got %v", c.name, err)
		}
	}
}

func TestCatalogAddresses(t *testing.T) {
	s := consulstandin.Start(t, consulstandin.Options{})
	raw, err := api.NewClient(&api.Config{Address: s.Addr})
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range []api.AgentServiceRegistration{
		{ID: "a", Address: "10.0.0.2", Port: 7000, Tags: []string{"raft"}},
		{ID: "b", Address: "10.0.0.1", Port: 7000, Tags: []string{"raft"}},
		{ID: "c", Address: "", Port: 7001},         // no address: the node's
		{ID: "d", Address: "10.0.0.1", Port: 7000}, // a duplicate address
	} {
		r.Name = "immutd"
		if err := raw.Agent().ServiceRegister(&r); err != nil {
			t.Fatalf("%d: %v", i, err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	all, err := CatalogAddresses(ctx, Config{Address: s.Addr}, "immutd", "")
	if want := []string{"10.0.0.1:7000", "10.0.0.2:7000", "127.0.0.1:7001"}; err != nil || !slices.Equal(all, want) {
		t.Fatalf("all: %v %v, want %v", all, err, want)
	}
	raft, err := CatalogAddresses(ctx, Config{Address: s.Addr}, "immutd", "raft")
	if want := []string{"10.0.0.1:7000", "10.0.0.2:7000"}; err != nil || !slices.Equal(raft, want) {
		t.Fatalf("raft: %v %v, want %v", raft, err, want)
	}
}

func TestDiffers(t *testing.T) {
	b, err := New(Config{Address: "127.0.0.1:1", Service: "web", Tags: []string{"a"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	reg, err := b.registration(testMember())
	if err != nil {
		t.Fatal(err)
	}
	same := func() (*api.AgentService, []*api.AgentCheck) {
		return &api.AgentService{ID: reg.ID, Service: "web", Address: "127.0.0.1", Port: 8080, Tags: []string{"a"},
				Meta: map[string]string{"external-source": "immutd", "immutd-fleet": "web", "immutd-instance": "web-1a2b"}},
			[]*api.AgentCheck{{CheckID: reg.Check.CheckID, Notes: reg.Check.Notes, Type: "ttl"}}
	}
	for want, mod := range map[string]func(*api.AgentService, *[]*api.AgentCheck){
		"":                func(*api.AgentService, *[]*api.AgentCheck) {},
		"address_changed": func(s *api.AgentService, _ *[]*api.AgentCheck) { s.Port = 1 },
		"tags_changed":    func(s *api.AgentService, _ *[]*api.AgentCheck) { s.Tags = nil },
		"meta_changed":    func(s *api.AgentService, _ *[]*api.AgentCheck) { s.Meta["x"] = "y" },
		"name_changed":    func(s *api.AgentService, _ *[]*api.AgentCheck) { s.Service = "db" },
		"check_missing":   func(_ *api.AgentService, c *[]*api.AgentCheck) { *c = nil },
		"check_changed":   func(_ *api.AgentService, c *[]*api.AgentCheck) { (*c)[0].Notes = "ttl 10s" },
		"extra_check": func(_ *api.AgentService, c *[]*api.AgentCheck) {
			*c = append(*c, &api.AgentCheck{CheckID: "service:" + reg.ID})
		},
	} {
		s, c := same()
		mod(s, &c)
		if got := differs(reg, s, c); got != want {
			t.Errorf("want %q, got %q", want, got)
		}
	}
	s, c := same()
	c = append(c, &api.AgentCheck{CheckID: "_service_maintenance:" + reg.ID})
	if got := differs(reg, s, c); got != "" {
		t.Errorf("an operator's maintenance is not a difference: %q", got)
	}
	if got := differs(reg, nil, nil); got != "missing" {
		t.Errorf("missing: %q", got)
	}
}

func TestCanaryRegistrationIsTagged(t *testing.T) {
	b, err := New(Config{Address: "127.0.0.1:8500", Service: "web", Tags: []string{"http"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	m := testMember()
	m.Canary = true
	canary, err := b.registration(m)
	if err != nil {
		t.Fatal(err)
	}
	m.Canary = false
	promoted, err := b.registration(m)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(canary.Tags, []string{"http", CanaryTag}) || !slices.Equal(promoted.Tags, []string{"http"}) {
		t.Fatalf("tags: canary %v, promoted %v", canary.Tags, promoted.Tags)
	}
	// Registered as a canary, the promoted registration differs: Sync
	// registers it again, without the tag.
	cur := &api.AgentService{ID: canary.ID, Service: canary.Name, Address: canary.Address, Port: canary.Port, Tags: canary.Tags, Meta: canary.Meta}
	if why := differs(promoted, cur, nil); why != "tags_changed" {
		t.Fatalf("a promoted canary's registration differs by %q, want tags_changed", why)
	}
}
