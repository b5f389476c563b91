package consul

// The contract suite: the Backend against a Consul HTTP address. It runs
// against the in-repo stand-in by default and, unchanged, against a real
// Consul agent when CONSUL_HTTP_ADDR is set (with CONSUL_HTTP_TOKEN,
// CONSUL_CACERT and CONSUL_TLS_SERVER_NAME when set). Every case uses a
// service name of its own and deregisters what it registered.

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"go.uber.org/zap/zaptest"

	"github.com/immutd/immutd/internal/secretfile"
	"github.com/immutd/immutd/internal/traffic"
	"github.com/immutd/immutd/internal/traffic/consul/consulstandin"
)

const standinToken = "contract-token-0123456789abcdef"

// target is the Consul the suite talks to.
type target struct {
	addr, token, caFile, serverName string
	// acl: an anonymous write is refused.
	acl     bool
	standin *consulstandin.Server // nil for a real agent
}

func contractTarget(t *testing.T) target {
	if addr := os.Getenv("CONSUL_HTTP_ADDR"); addr != "" {
		tok := os.Getenv("CONSUL_HTTP_TOKEN")
		return target{addr: addr, token: tok, caFile: os.Getenv("CONSUL_CACERT"),
			serverName: os.Getenv("CONSUL_TLS_SERVER_NAME"), acl: tok != ""}
	}
	s := consulstandin.Start(t, consulstandin.Options{Token: standinToken})
	return target{addr: s.Addr, token: standinToken, acl: true, standin: s}
}

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// suite is one contract case's world: a target, a service name of its own
// and a raw api client to look at and tamper with what the agent holds.
type suite struct {
	t              *testing.T
	tg             target
	fleet, service string
	raw            *api.Client
}

func newSuite(t *testing.T, tg target) *suite {
	t.Helper()
	raw, err := api.NewClient(&api.Config{Address: tg.addr, Token: tg.token,
		TLSConfig: api.TLSConfig{CAFile: tg.caFile, Address: tg.serverName}})
	if err != nil {
		t.Fatal(err)
	}
	// Service IDs are unique per agent, so every case has a fleet of its
	// own, and a service name.
	fleet := fmt.Sprintf("ct%08x", rand.Uint32())
	s := &suite{t: t, tg: tg, fleet: fleet, service: "immutd-" + fleet, raw: raw}
	t.Cleanup(func() {
		for _, name := range []string{s.service, s.service + "-other"} {
			svcs, err := raw.Agent().ServicesWithFilter(fmt.Sprintf("Service == %q", name))
			if err != nil {
				t.Logf("cleanup: %v", err)
				return
			}
			for id := range svcs {
				if err := raw.Agent().ServiceDeregister(id); err != nil {
					t.Logf("cleanup %s: %v", id, err)
				}
			}
		}
	})
	return s
}

func (s *suite) tokenFile(tok string) string {
	s.t.Helper()
	if tok == "" {
		return ""
	}
	p := filepath.Join(s.t.TempDir(), "consul.token")
	if err := os.WriteFile(p, []byte(tok+"\n"), 0o600); err != nil {
		s.t.Fatal(err)
	}
	return p
}

func (s *suite) config() Config {
	return Config{Address: s.tg.addr, Service: s.service, Tags: []string{"immutd", "web"},
		Meta: map[string]string{"team": "infra"}, TokenFile: s.tokenFile(s.tg.token),
		CAFile: s.tg.caFile, TLSServerName: s.tg.serverName}
}

// backend makes a Backend for the case's service; mod may change its
// config. The clock starts at New.
func (s *suite) backend(mod func(*Config)) (*Backend, *fakeClock) {
	s.t.Helper()
	cfg := s.config()
	if mod != nil {
		mod(&cfg)
	}
	b, err := New(cfg, zaptest.NewLogger(s.t))
	if err != nil {
		s.t.Fatal(err)
	}
	s.t.Cleanup(func() { b.Close() })
	clk := &fakeClock{t: b.created}
	b.now = clk.Now
	return b, clk
}

// member is instance i-<n> of the case's fleet.
func (s *suite) member(n int) traffic.Member {
	return traffic.Member{Fleet: s.fleet, InstanceID: fmt.Sprintf("i-%d", n), Address: fmt.Sprintf("127.0.0.1:%d", 20000+n),
		ImageDigest: "sha256:" + strings.Repeat("ab", 32), Version: "v1.2.3", Healthy: true}
}

// id is the service ID of member n; check its check ID.
func (s *suite) id(n int) string    { return fmt.Sprintf("immutd-%s-i-%d", s.fleet, n) }
func (s *suite) check(n int) string { return fmt.Sprintf("immutd-check-%s-i-%d", s.fleet, n) }

func unhealthy(m traffic.Member) traffic.Member { m.Healthy = false; return m }

func keepAll(string) bool  { return true }
func keepNone(string) bool { return false }

func ctx30(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// agentService is the agent's registration id, or nil.
func (s *suite) agentService(id string) *api.AgentService {
	s.t.Helper()
	svcs, err := s.raw.Agent().ServicesWithFilter(fmt.Sprintf("ID == %q", id))
	if err != nil {
		s.t.Fatal(err)
	}
	return svcs[id]
}

func (s *suite) agentCheck(id string) *api.AgentCheck {
	s.t.Helper()
	checks, err := s.raw.Agent().ChecksWithFilter(fmt.Sprintf("CheckID == %q", id))
	if err != nil {
		s.t.Fatal(err)
	}
	return checks[id]
}

// passing lists the service IDs in health/service/<service>?passing; with
// a non-zero index it is a blocking read.
func (s *suite) passing(index uint64) ([]string, uint64) {
	s.t.Helper()
	entries, meta, err := s.raw.Health().Service(s.service, "", true,
		(&api.QueryOptions{WaitIndex: index, WaitTime: 5 * time.Second}).WithContext(ctx30(s.t)))
	if err != nil {
		s.t.Fatal(err)
	}
	var ids []string
	for _, e := range entries {
		ids = append(ids, e.Service.ID)
	}
	return ids, meta.LastIndex
}

// waitPassing waits (blocking reads, at most 30s) until id is in the
// passing set (want) or not.
func (s *suite) waitPassing(id string, want bool) {
	s.t.Helper()
	var index uint64
	for deadline := time.Now().Add(30 * time.Second); ; {
		ids, idx := s.passing(index)
		if slices.Contains(ids, id) == want {
			return
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("%s in passing set = %v after 30s, want %v", id, !want, want)
		}
		index = max(idx, 1)
	}
}

// waitGone waits until the agent no longer holds id, calling step (a
// Sync) before every look; at most 30s.
func (s *suite) waitGone(id string, step func()) {
	s.t.Helper()
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		step()
		if s.agentService(id) == nil {
			return
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("%s still registered after 30s", id)
		}
	}
}

func must(t *testing.T, what string, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

func TestContract(t *testing.T) {
	tg := contractTarget(t)
	if tg.standin == nil {
		t.Logf("contract against the Consul agent at %s", tg.addr)
	}
	for _, c := range []struct {
		name string
		run  func(t *testing.T, s *suite)
	}{
		{"admit_confirms_passing", testAdmit},
		{"admit_of_unhealthy_is_refused", testAdmitUnhealthy},
		{"admit_waits_for_passing", testAdmitWaits},
		{"admit_gives_up_at_deadline", testAdmitDeadline},
		{"sync_unhealthy_turns_critical", testSyncUnhealthy},
		{"drain_leaves_passing_set", testDrain},
		{"sync_reregisters_deleted", testSyncReregisters},
		{"sync_repairs_changed", testSyncRepairs},
		{"sync_leaves_foreign_services", testSyncForeign},
		{"sync_grace_for_unknown", testSyncGrace},
		{"sync_grace_real_clock", testSyncGraceRealClock},
		{"sync_removes_forgotten_member_it_admitted", testSyncForgotten},
		{"sync_scoped_to_fleet", testSyncFleet},
		{"token_file_honoured", testToken},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			c.run(t, newSuite(t, tg))
		})
	}
}

// testAdmit: Admit registers with the documented IDs, meta and TTL check,
// returns only once the instance is passing, and is idempotent.
func testAdmit(t *testing.T, s *suite) {
	b, _ := s.backend(nil)
	m := s.member(1)
	for i := range 2 {
		must(t, fmt.Sprintf("admit #%d", i+1), b.Admit(ctx30(t), m))
		ids, _ := s.passing(0)
		if !slices.Equal(ids, []string{s.id(1)}) {
			t.Fatalf("after admit #%d, passing: %v", i+1, ids)
		}
	}
	svc := s.agentService(s.id(1))
	want := map[string]string{"team": "infra", "external-source": "immutd", "immutd-fleet": s.fleet,
		"immutd-instance": "i-1", "immutd-image-digest": m.ImageDigest, "immutd-version": "v1.2.3"}
	for k, v := range want {
		if svc.Meta[k] != v {
			t.Errorf("meta %s = %q, want %q", k, svc.Meta[k], v)
		}
	}
	if svc.Service != s.service || svc.Address != "127.0.0.1" || svc.Port != 20001 || !slices.Equal(svc.Tags, []string{"immutd", "web"}) {
		t.Errorf("registration: %+v", svc)
	}
	chk := s.agentCheck(s.check(1))
	if chk == nil || chk.Status != "passing" || chk.Output != "immutd verdict: healthy" || chk.ServiceID != s.id(1) {
		t.Fatalf("check: %+v", chk)
	}
	if n, known, err := b.Connections(ctx30(t), m); n != 0 || known || err != nil {
		t.Errorf("connections: %d %v %v", n, known, err)
	}
	if b.Name() != fmt.Sprintf("consul %q", s.service) {
		t.Errorf("name %s", b.Name())
	}
}

// testAdmitUnhealthy: a member immutd judges unhealthy is registered with
// a critical check and Admit says why it is not admitted.
func testAdmitUnhealthy(t *testing.T, s *suite) {
	b, _ := s.backend(nil)
	err := b.Admit(ctx30(t), unhealthy(s.member(1)))
	if err == nil || !strings.Contains(err.Error(), "consul: admit i-1: immutd's verdict is unhealthy") {
		t.Fatalf("admit unhealthy: %v", err)
	}
	if chk := s.agentCheck(s.check(1)); chk == nil || chk.Status != "critical" {
		t.Fatalf("check: %+v", chk)
	}
	if ids, _ := s.passing(0); len(ids) != 0 {
		t.Fatalf("passing: %v", ids)
	}
}

// testAdmitWaits: Admit blocks until Consul shows the member passing
// (here: until an operator ends maintenance mode); it does not undo the
// maintenance itself.
func testAdmitWaits(t *testing.T, s *suite) {
	b, _ := s.backend(nil)
	m := s.member(1)
	must(t, "admit", b.Admit(ctx30(t), m))
	must(t, "maintenance", s.raw.Agent().EnableServiceMaintenance(s.id(1), "contract test"))
	s.waitPassing(s.id(1), false)
	done := make(chan error, 1)
	go func() { done <- b.Admit(ctx30(t), m) }()
	if s.tg.standin != nil {
		for deadline := time.Now().Add(30 * time.Second); s.tg.standin.Waiters() == 0; time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatal("admit never blocked on health/service")
			}
		}
	}
	must(t, "end maintenance", s.raw.Agent().DisableServiceMaintenance(s.id(1)))
	must(t, "admit during maintenance", <-done)
}

// testAdmitDeadline: when Consul never shows the member passing, Admit
// returns at its context's deadline with an error that says so.
func testAdmitDeadline(t *testing.T, s *suite) {
	b, _ := s.backend(nil)
	m := s.member(1)
	must(t, "admit", b.Admit(ctx30(t), m))
	must(t, "maintenance", s.raw.Agent().EnableServiceMaintenance(s.id(1), "contract test"))
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	err := b.Admit(ctx, m)
	if !errors.Is(err, context.DeadlineExceeded) || errors.Is(err, traffic.ErrUnreachable) ||
		!strings.Contains(err.Error(), "not confirmed: "+s.id(1)+" not yet in health/service/"+s.service+"?passing") {
		t.Fatalf("admit in maintenance: %v", err)
	}
}

// testSyncUnhealthy: Sync drives the TTL check from Healthy: unhealthy
// turns it critical and out of the passing set, healthy brings it back.
func testSyncUnhealthy(t *testing.T, s *suite) {
	b, _ := s.backend(nil)
	m := s.member(1)
	must(t, "admit", b.Admit(ctx30(t), m))
	for range 2 {
		must(t, "sync unhealthy", b.Sync(ctx30(t), []traffic.Member{unhealthy(m)}, keepAll))
	}
	chk := s.agentCheck(s.check(1))
	if chk.Status != "critical" || !strings.Contains(chk.Output, "unhealthy") {
		t.Fatalf("check after unhealthy sync: %s %q", chk.Status, chk.Output)
	}
	s.waitPassing(s.id(1), false)
	must(t, "sync healthy", b.Sync(ctx30(t), []traffic.Member{m}, keepAll))
	s.waitPassing(s.id(1), true)
}

// testDrain: Drain returns once the member is out of the passing set and
// deregistered; Drain and Remove are idempotent, also for a member that
// was never there.
func testDrain(t *testing.T, s *suite) {
	b, _ := s.backend(nil)
	m := s.member(1)
	must(t, "admit", b.Admit(ctx30(t), m))
	for i := range 2 {
		must(t, fmt.Sprintf("drain #%d", i+1), b.Drain(ctx30(t), m))
		if ids, _ := s.passing(0); slices.Contains(ids, s.id(1)) {
			t.Fatalf("after drain #%d, passing: %v", i+1, ids)
		}
	}
	if svc := s.agentService(s.id(1)); svc != nil {
		t.Fatalf("still registered after drain: %+v", svc)
	}
	for i := range 2 {
		must(t, fmt.Sprintf("remove #%d", i+1), b.Remove(ctx30(t), m))
	}
	must(t, "drain of a member never admitted", b.Drain(ctx30(t), s.member(2)))
	must(t, "remove of a member never admitted", b.Remove(ctx30(t), s.member(2)))
}

// testSyncReregisters: a registration deleted behind immutd's back (agent
// restart without persistence, an operator) is registered again by Sync.
func testSyncReregisters(t *testing.T, s *suite) {
	b, _ := s.backend(nil)
	m := s.member(1)
	must(t, "admit", b.Admit(ctx30(t), m))
	must(t, "deregister behind its back", s.raw.Agent().ServiceDeregister(s.id(1)))
	for range 2 {
		must(t, "sync", b.Sync(ctx30(t), []traffic.Member{m}, keepAll))
	}
	if chk := s.agentCheck(s.check(1)); chk == nil || chk.Status != "passing" {
		t.Fatalf("check after sync: %+v", chk)
	}
	s.waitPassing(s.id(1), true)
}

// testSyncRepairs: a registration changed behind immutd's back (port,
// tags, meta) is registered again as immutd wants it.
func testSyncRepairs(t *testing.T, s *suite) {
	b, _ := s.backend(nil)
	m := s.member(1)
	must(t, "admit", b.Admit(ctx30(t), m))
	svc := s.agentService(s.id(1))
	changed := &api.AgentServiceRegistration{ID: svc.ID, Name: svc.Service, Address: svc.Address, Port: 9,
		Tags: []string{"other"}, Meta: svc.Meta}
	must(t, "change behind its back", s.raw.Agent().ServiceRegister(changed))
	must(t, "sync", b.Sync(ctx30(t), []traffic.Member{m}, keepAll))
	if svc := s.agentService(s.id(1)); svc.Port != 20001 || !slices.Equal(svc.Tags, []string{"immutd", "web"}) {
		t.Fatalf("after sync: %+v", svc)
	}
	s.waitPassing(s.id(1), true)
}

func ownedMeta(fleet, inst string) map[string]string {
	return map[string]string{"external-source": "immutd", "immutd-fleet": fleet, "immutd-instance": inst}
}

// testSyncForeign: Sync deregisters only what carries all of immutd's
// marks (service name, external-source, immutd- ID matching its meta).
func testSyncForeign(t *testing.T, s *suite) {
	b, clk := s.backend(nil)
	clk.Advance(time.Hour) // past the grace period
	f := s.fleet
	foreign := []*api.AgentServiceRegistration{
		{ID: f + "-foreign-1", Name: s.service, Port: 1},
		{ID: "immutd-" + f + "-x", Name: s.service, Port: 2, Meta: map[string]string{"immutd-fleet": f, "immutd-instance": "x"}},
		{ID: "not-immutd-" + f + "-y", Name: s.service, Port: 3, Meta: ownedMeta(f, "y")},
		{ID: "immutd-" + f + "-z", Name: s.service, Port: 4, Meta: ownedMeta(f, "other")},
		{ID: "immutd-" + f + "-w", Name: s.service + "-other", Port: 5, Meta: ownedMeta(f, "w")},
	}
	for _, r := range foreign {
		must(t, "register "+r.ID, s.raw.Agent().ServiceRegister(r))
	}
	// A registration of immutd's own that nobody knows: Sync removes it,
	// which shows the pass ran past the grace period.
	gone := "immutd-" + f + "-gone"
	must(t, "register owned", s.raw.Agent().ServiceRegister(&api.AgentServiceRegistration{
		ID: gone, Name: s.service, Port: 6, Meta: ownedMeta(f, "gone")}))
	for range 2 {
		must(t, "sync", b.Sync(ctx30(t), nil, keepNone))
	}
	for _, r := range foreign {
		if s.agentService(r.ID) == nil {
			t.Errorf("sync removed %s, which is not immutd's", r.ID)
		}
	}
	if s.agentService(gone) != nil {
		t.Error("sync kept an unknown immutd registration past the grace period")
	}
}

// testSyncGrace: registrations immutd made before this Backend existed
// (a previous leader) survive Sync during the grace period and are
// deregistered after it when keep does not know them; those keep knows
// stay.
func testSyncGrace(t *testing.T, s *suite) {
	prev, _ := s.backend(nil)
	must(t, "admit by the previous leader", prev.Admit(ctx30(t), s.member(1)))
	must(t, "admit by the previous leader", prev.Admit(ctx30(t), s.member(2)))
	b, clk := s.backend(func(c *Config) { c.Grace = time.Minute })
	keep := func(id string) bool { return id == "i-2" }
	must(t, "sync at start", b.Sync(ctx30(t), nil, keep))
	clk.Advance(time.Minute - time.Nanosecond)
	must(t, "sync at the end of grace", b.Sync(ctx30(t), nil, keep))
	if s.agentService(s.id(1)) == nil || s.agentService(s.id(2)) == nil {
		t.Fatal("sync removed a registration during the grace period")
	}
	clk.Advance(time.Nanosecond)
	for range 2 {
		must(t, "sync after grace", b.Sync(ctx30(t), nil, keep))
	}
	if s.agentService(s.id(1)) != nil {
		t.Error("unknown registration kept after the grace period")
	}
	if s.agentService(s.id(2)) == nil {
		t.Error("sync removed a registration keep knows")
	}
}

// testSyncGraceRealClock: the same with the real clock and a short grace,
// waiting on the condition.
func testSyncGraceRealClock(t *testing.T, s *suite) {
	prev, _ := s.backend(nil)
	must(t, "admit by the previous leader", prev.Admit(ctx30(t), s.member(1)))
	b, err := New(s.config(), zaptest.NewLogger(t))
	must(t, "new", err)
	defer b.Close()
	b.cfg.Grace = time.Millisecond
	s.waitGone(s.id(1), func() { must(t, "sync", b.Sync(ctx30(t), nil, keepNone)) })
}

// testSyncForgotten: a member this Backend admitted and keep no longer
// knows is deregistered at once, without waiting for the grace period.
func testSyncForgotten(t *testing.T, s *suite) {
	b, _ := s.backend(nil)
	must(t, "admit", b.Admit(ctx30(t), s.member(1)))
	must(t, "admit", b.Admit(ctx30(t), s.member(2)))
	must(t, "sync", b.Sync(ctx30(t), nil, func(id string) bool { return id == "i-2" }))
	if s.agentService(s.id(1)) != nil {
		t.Error("forgotten member still registered")
	}
	if s.agentService(s.id(2)) == nil {
		t.Error("known member (not admitted in this pass) was removed")
	}
}

// testSyncFleet: with Config.Fleet, two fleets sharing a service name do
// not remove each other's registrations, and Admit refuses the other
// fleet's member.
func testSyncFleet(t *testing.T, s *suite) {
	mb, mg := s.member(1), s.member(2)
	mb.Fleet, mg.Fleet = s.fleet+"-blue", s.fleet+"-green"
	blue, clk := s.backend(func(c *Config) { c.Fleet = mb.Fleet })
	green, _ := s.backend(func(c *Config) { c.Fleet = mg.Fleet })
	must(t, "admit blue", blue.Admit(ctx30(t), mb))
	must(t, "admit green", green.Admit(ctx30(t), mg))
	clk.Advance(time.Hour)
	must(t, "sync blue", blue.Sync(ctx30(t), []traffic.Member{mb}, func(id string) bool { return id == mb.InstanceID }))
	if s.agentService("immutd-"+mg.Fleet+"-i-2") == nil {
		t.Fatal("blue's sync removed green's registration")
	}
	if err := blue.Admit(ctx30(t), mg); err == nil || !strings.Contains(err.Error(), fmt.Sprintf("this backend serves fleet %q", mb.Fleet)) {
		t.Fatalf("blue admitting green's member: %v", err)
	}
}

// testToken: the token file's token is what the backend sends: without
// it Consul refuses (an HTTP answer, not "unreachable"), a token file
// others may read is refused by New.
func testToken(t *testing.T, s *suite) {
	if s.tg.acl {
		b, _ := s.backend(func(c *Config) { c.TokenFile = "" })
		err := b.Admit(ctx30(t), s.member(1))
		if err == nil || errors.Is(err, traffic.ErrUnreachable) || !strings.Contains(err.Error(), "consul answered HTTP 403") {
			t.Fatalf("admit without a token: %v", err)
		}
		wrong, _ := s.backend(func(c *Config) { c.TokenFile = s.tokenFile("wrong-token-0123456789abcdef") })
		if err := wrong.Sync(ctx30(t), []traffic.Member{s.member(1)}, keepAll); err == nil || !strings.Contains(err.Error(), "HTTP 403") {
			t.Fatalf("sync with a wrong token: %v", err)
		}
	}
	cfg := s.config()
	if cfg.TokenFile != "" {
		must(t, "chmod", os.Chmod(cfg.TokenFile, 0o644))
		if _, err := New(cfg, nil); !errors.Is(err, secretfile.ErrTooOpen) {
			t.Fatalf("token file mode 0644: %v", err)
		}
		must(t, "chmod", os.Chmod(cfg.TokenFile, 0o600))
	}
	b, _ := s.backend(nil)
	must(t, "admit with the token file", b.Admit(ctx30(t), s.member(1)))
}
