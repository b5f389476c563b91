package consulstandin

import (
	"context"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
)

const token = "standin-test-token-0123456789"

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

func client(t *testing.T, s *Server, tok string) *api.Client {
	t.Helper()
	c, err := api.NewClient(&api.Config{Address: s.Addr, Scheme: "http", Token: tok})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// do sends a raw request and returns the status, body and X-Consul-Index.
func do(t *testing.T, method, u, tok string, body io.Reader) (int, string, uint64) {
	t.Helper()
	req, err := http.NewRequest(method, u, body)
	if err != nil {
		t.Fatal(err)
	}
	if tok != "" {
		req.Header.Set("X-Consul-Token", tok)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	idx, _ := strconv.ParseUint(resp.Header.Get("X-Consul-Index"), 10, 64)
	return resp.StatusCode, string(b), idx
}

func ttlService(id, ttl, status string) *api.AgentServiceRegistration {
	return &api.AgentServiceRegistration{ID: id, Name: "web", Address: "127.0.0.1", Port: 8080,
		Check: &api.AgentServiceCheck{CheckID: "chk-" + id, TTL: ttl, Status: status}}
}

func passingIDs(t *testing.T, c *api.Client, q *api.QueryOptions) ([]string, uint64) {
	t.Helper()
	entries, meta, err := c.Health().Service("web", "", true, q)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, e := range entries {
		ids = append(ids, e.Service.ID)
	}
	return ids, meta.LastIndex
}

func checkOf(t *testing.T, c *api.Client, id string) *api.AgentCheck {
	t.Helper()
	checks, err := c.Agent().Checks()
	if err != nil {
		t.Fatal(err)
	}
	return checks[id]
}

// waitFor polls cond until it holds or 30s pass.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); !cond(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

func TestTTLExpiryWithInjectedClock(t *testing.T) {
	clk := &fakeClock{t: time.Unix(1_700_000_000, 0)}
	s := Start(t, Options{Now: clk.Now})
	c := client(t, s, "")
	if err := c.Agent().ServiceRegister(ttlService("a", "30s", "passing")); err != nil {
		t.Fatal(err)
	}
	if ids, _ := passingIDs(t, c, nil); len(ids) != 1 {
		t.Fatalf("passing right after register with Status passing: %v", ids)
	}
	clk.Advance(30*time.Second - time.Nanosecond)
	s.Expire()
	if chk := checkOf(t, c, "chk-a"); chk.Status != "passing" {
		t.Fatalf("before the TTL ran out: %s", chk.Status)
	}
	before := s.Index()
	clk.Advance(time.Nanosecond)
	s.Expire()
	if chk := checkOf(t, c, "chk-a"); chk.Status != "critical" || chk.Output != "TTL expired" {
		t.Fatalf("after the TTL: %s %q", chk.Status, chk.Output)
	}
	if s.Index() <= before {
		t.Fatalf("expiry did not move the index: %d -> %d", before, s.Index())
	}
	if ids, _ := passingIDs(t, c, nil); len(ids) != 0 {
		t.Fatalf("expired check still passing: %v", ids)
	}
	// An update sets the status and restarts the TTL clock.
	if err := c.Agent().UpdateTTL("chk-a", "fine", "pass"); err != nil {
		t.Fatal(err)
	}
	clk.Advance(29 * time.Second)
	s.Expire()
	if chk := checkOf(t, c, "chk-a"); chk.Status != "passing" || chk.Output != "fine" {
		t.Fatalf("after update: %s %q", chk.Status, chk.Output)
	}
	// A request expires what is due, without Expire.
	clk.Advance(time.Second)
	if chk := checkOf(t, c, "chk-a"); chk.Status != "critical" {
		t.Fatalf("a request did not expire the check: %s", chk.Status)
	}
}

func TestTTLExpiryWithRealTimer(t *testing.T) {
	s := Start(t, Options{})
	c := client(t, s, "")
	if err := c.Agent().ServiceRegister(ttlService("a", "1ms", "passing")); err != nil {
		t.Fatal(err)
	}
	// The timer expires the check and wakes blocking readers.
	var index uint64
	for deadline := time.Now().Add(30 * time.Second); ; {
		ids, idx := passingIDs(t, c, &api.QueryOptions{WaitIndex: index, WaitTime: 5 * time.Second})
		if len(ids) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("TTL never expired")
		}
		index = idx
	}
	if chk := checkOf(t, c, "chk-a"); chk.Status != "critical" || chk.Output != "TTL expired" {
		t.Fatalf("%s %q", chk.Status, chk.Output)
	}
}

func TestBlockingQueryReturnsOnWrite(t *testing.T) {
	s := Start(t, Options{})
	c := client(t, s, "")
	_, index := passingIDs(t, c, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	type result struct {
		ids   []string
		index uint64
		err   error
	}
	got := make(chan result, 1)
	go func() {
		entries, meta, err := c.Health().Service("web", "", true,
			(&api.QueryOptions{WaitIndex: index, WaitTime: 10 * time.Minute}).WithContext(ctx))
		r := result{err: err}
		if err == nil {
			r.index = meta.LastIndex
			for _, e := range entries {
				r.ids = append(r.ids, e.Service.ID)
			}
		}
		got <- r
	}()
	waitFor(t, "the blocking read to wait", func() bool { return s.Waiters() == 1 })
	if err := c.Agent().ServiceRegister(ttlService("a", "30s", "passing")); err != nil {
		t.Fatal(err)
	}
	r := <-got
	if r.err != nil || r.index <= index || len(r.ids) != 1 || r.ids[0] != "a" {
		t.Fatalf("blocking read after a write: %+v (index was %d)", r, index)
	}
}

func TestBlockingQueryReturnsAfterWait(t *testing.T) {
	s := Start(t, Options{})
	c := client(t, s, "")
	_, index := passingIDs(t, c, nil)
	_, after := passingIDs(t, c, &api.QueryOptions{WaitIndex: index, WaitTime: 20 * time.Millisecond})
	if after != index {
		t.Fatalf("a read that timed out changed the index: %d -> %d", index, after)
	}
	if st, body, _ := do(t, "GET", s.URL+"/v1/health/service/web?index=1&wait=soon", "", nil); st != 400 {
		t.Fatalf("bad wait: %d %s", st, body)
	}
}

func TestIndexIsMonotonic(t *testing.T) {
	s := Start(t, Options{})
	c := client(t, s, "")
	_, last := passingIDs(t, c, nil)
	if last < 1 {
		t.Fatalf("initial index %d", last)
	}
	writes := []func() error{
		func() error { return c.Agent().ServiceRegister(ttlService("a", "30s", "")) },
		func() error { return c.Agent().UpdateTTL("chk-a", "", "pass") },
		func() error { return c.Agent().UpdateTTL("chk-a", "", "pass") }, // an idempotent write moves it too
		func() error { return c.Agent().EnableServiceMaintenance("a", "test") },
		func() error { return c.Agent().DisableServiceMaintenance("a") },
		func() error { return c.Agent().ServiceDeregister("a") },
	}
	for i, w := range writes {
		if err := w(); err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
		_, idx := passingIDs(t, c, nil)
		if _, _, cat := do(t, "GET", s.URL+"/v1/catalog/service/web", "", nil); cat != idx || idx <= last {
			t.Fatalf("write %d: index %d (catalog %d), previous %d", i, idx, cat, last)
		}
		last = idx
	}
}

func TestRegistration(t *testing.T) {
	s := Start(t, Options{})
	c := client(t, s, "")
	reg := &api.AgentServiceRegistration{ID: "a", Name: "web", Port: 1, Tags: []string{"t1"},
		Checks: api.AgentServiceChecks{{TTL: "30s"}, {TTL: "30s", Status: "passing"}}}
	if err := c.Agent().ServiceRegister(reg); err != nil {
		t.Fatal(err)
	}
	// Generated IDs and the default initial status (critical).
	if a, b := checkOf(t, c, "service:a:1"), checkOf(t, c, "service:a:2"); a == nil || b == nil ||
		a.Status != "critical" || b.Status != "passing" || a.Type != "ttl" || a.Name != "Service 'web' check" {
		t.Fatalf("generated checks: %+v %+v", a, b)
	}
	if err := c.Agent().UpdateTTL("service:a:1", "ok", "pass"); err != nil {
		t.Fatal(err)
	}
	// Registering again keeps an existing check's status; without
	// replace-existing-checks the other check stays.
	reg.Checks = api.AgentServiceChecks{{CheckID: "service:a:1", TTL: "30s", Status: "critical"}}
	if err := c.Agent().ServiceRegister(reg); err != nil {
		t.Fatal(err)
	}
	if a, b := checkOf(t, c, "service:a:1"), checkOf(t, c, "service:a:2"); a.Status != "passing" || a.Output != "ok" || b == nil {
		t.Fatalf("re-register without replace: %+v %+v", a, b)
	}
	if err := c.Agent().ServiceRegisterOpts(reg, api.ServiceRegisterOpts{ReplaceExistingChecks: true}); err != nil {
		t.Fatal(err)
	}
	if checks, _ := c.Agent().Checks(); len(checks) != 1 || checks["service:a:1"] == nil {
		t.Fatalf("replace-existing-checks: %v", checks)
	}
	for name, bad := range map[string]*api.AgentServiceRegistration{
		"no name":     {ID: "x"},
		"http check":  {Name: "web", Check: &api.AgentServiceCheck{HTTP: "http://127.0.0.1:1/", Interval: "10s"}},
		"bad ttl":     {Name: "web", Check: &api.AgentServiceCheck{TTL: "soon"}},
		"bad meta":    {Name: "web", Meta: map[string]string{"bad key": "x"}},
		"reserved":    {Name: "web", Meta: map[string]string{"consul-x": "x"}},
		"long value":  {Name: "web", Meta: map[string]string{"k": strings.Repeat("v", 513)}},
		"mesh":        {Name: "web", Kind: api.ServiceKindConnectProxy},
		"ttl+interva": {Name: "web", Check: &api.AgentServiceCheck{TTL: "10s", Interval: "10s"}},
	} {
		if err := c.Agent().ServiceRegister(bad); err == nil || !strings.Contains(err.Error(), "400") {
			t.Errorf("%s: %v", name, err)
		}
	}
	if st, _, _ := do(t, "PUT", s.URL+"/v1/agent/service/register", "", strings.NewReader(`{"Name":"`+strings.Repeat("a", 2<<20)+`"}`)); st != 413 {
		t.Errorf("2 MiB body: %d", st)
	}
}

func TestDeregisterUpdateMaintenance(t *testing.T) {
	s := Start(t, Options{})
	c := client(t, s, "")
	if err := c.Agent().ServiceDeregister("nope"); err == nil || !strings.Contains(err.Error(), "404") {
		t.Fatalf("deregister unknown: %v", err)
	}
	if err := c.Agent().UpdateTTL("nope", "", "pass"); err == nil || !strings.Contains(err.Error(), "404") {
		t.Fatalf("update unknown: %v", err)
	}
	if err := c.Agent().ServiceRegister(ttlService("a", "30s", "passing")); err != nil {
		t.Fatal(err)
	}
	if st, body, _ := do(t, "PUT", s.URL+"/v1/agent/check/update/chk-a", "", strings.NewReader(`{"Status":"fine"}`)); st != 400 {
		t.Fatalf("bad status: %d %s", st, body)
	}
	if err := c.Agent().EnableServiceMaintenance("a", "upgrade"); err != nil {
		t.Fatal(err)
	}
	if chk := checkOf(t, c, "_service_maintenance:a"); chk == nil || chk.Status != "critical" || chk.Notes != "upgrade" {
		t.Fatalf("maintenance check: %+v", chk)
	}
	if ids, _ := passingIDs(t, c, nil); len(ids) != 0 {
		t.Fatalf("in maintenance but passing: %v", ids)
	}
	if err := c.Agent().UpdateTTL("_service_maintenance:a", "", "pass"); err == nil || !strings.Contains(err.Error(), "500") {
		t.Fatalf("TTL update of the maintenance check: %v", err)
	}
	if err := c.Agent().DisableServiceMaintenance("a"); err != nil {
		t.Fatal(err)
	}
	if ids, _ := passingIDs(t, c, nil); len(ids) != 1 {
		t.Fatalf("after maintenance: %v", ids)
	}
	if st, _, _ := do(t, "PUT", s.URL+"/v1/agent/service/maintenance/a", "", nil); st != 400 {
		t.Fatalf("maintenance without enable: %d", st)
	}
	if err := c.Agent().EnableServiceMaintenance("nope", ""); err == nil || !strings.Contains(err.Error(), "404") {
		t.Fatalf("maintenance of unknown: %v", err)
	}
	if err := c.Agent().ServiceDeregister("a"); err != nil {
		t.Fatal(err)
	}
	if checks, _ := c.Agent().Checks(); len(checks) != 0 {
		t.Fatalf("deregister left checks: %v", checks)
	}
}

func TestFilterSubset(t *testing.T) {
	s := Start(t, Options{})
	c := client(t, s, "")
	for _, r := range []*api.AgentServiceRegistration{
		{ID: "a", Name: "web", Meta: map[string]string{"external-source": "immutd"}, Check: &api.AgentServiceCheck{TTL: "30s"}},
		{ID: "b", Name: "web"},
		{ID: "c", Name: "db", Meta: map[string]string{"external-source": "immutd"}},
	} {
		if err := c.Agent().ServiceRegister(r); err != nil {
			t.Fatal(err)
		}
	}
	for filter, want := range map[string]string{
		``:                 "a,b,c",
		`Service == "web"`: "a,b",
		`Service == "web" and Meta["external-source"] == "immutd"`: "a",
		`Meta.env == "x"`:                  "",
		`ID == "c"   and  Service == "db"`: "c",
	} {
		got, err := c.Agent().ServicesWithFilter(filter)
		if err != nil {
			t.Errorf("%s: %v", filter, err)
			continue
		}
		var ids []string
		for _, id := range []string{"a", "b", "c"} {
			if got[id] != nil {
				ids = append(ids, id)
			}
		}
		if strings.Join(ids, ",") != want {
			t.Errorf("%s: %v, want %s", filter, ids, want)
		}
	}
	if checks, err := c.Agent().ChecksWithFilter(`ServiceName == "web" and ServiceID == "a"`); err != nil || len(checks) != 1 {
		t.Errorf("check filter: %v %v", checks, err)
	}
	for _, filter := range []string{`Service != "web"`, `"web" in Tags`, `Service == "a" or ID == "b"`,
		`Foo == "x"`, `Service == "web" and`, `Service == web`, `not Service == "web"`} {
		if _, err := c.Agent().ServicesWithFilter(filter); err == nil || !strings.Contains(err.Error(), "400") {
			t.Errorf("unsupported filter %s: %v", filter, err)
		}
	}
	if _, err := c.Agent().ChecksWithFilter(`Meta.x == "y"`); err == nil || !strings.Contains(err.Error(), "400") {
		t.Errorf("service selector on checks: %v", err)
	}
}

func TestACL(t *testing.T) {
	s := Start(t, Options{Token: token})
	owner, anon, wrong := client(t, s, token), client(t, s, ""), client(t, s, "not-the-token-0123456789")
	if err := anon.Agent().ServiceRegister(ttlService("a", "30s", "passing")); err == nil || !strings.Contains(err.Error(), "403") {
		t.Fatalf("anonymous write: %v", err)
	}
	if err := wrong.Agent().ServiceRegister(ttlService("a", "30s", "passing")); err == nil || !strings.Contains(err.Error(), "ACL not found") {
		t.Fatalf("wrong token: %v", err)
	}
	if err := owner.Agent().ServiceRegister(ttlService("a", "30s", "passing")); err != nil {
		t.Fatal(err)
	}
	entries, meta, err := anon.Health().Service("web", "", true, nil)
	if err != nil || len(entries) != 0 || !meta.ResultsFilteredByACLs {
		t.Fatalf("anonymous read: %v %+v %v", entries, meta, err)
	}
	if ids, _ := passingIDs(t, owner, nil); len(ids) != 1 {
		t.Fatalf("owner read: %v", ids)
	}
	if leader, err := anon.Status().Leader(); err != nil || leader == "" {
		t.Fatalf("status/leader needs no token: %q %v", leader, err)
	}
}

func TestCatalogService(t *testing.T) {
	s := Start(t, Options{})
	c := client(t, s, "")
	for i, tags := range [][]string{{"raft"}, {"raft", "x"}, nil} {
		id := strconv.Itoa(i)
		if err := c.Agent().ServiceRegister(&api.AgentServiceRegistration{ID: id, Name: "immutd", Address: "10.0.0." + id,
			Port: 7000 + i, Tags: tags, Meta: map[string]string{"k": id}}); err != nil {
			t.Fatal(err)
		}
	}
	all, meta, err := c.Catalog().Service("immutd", "", &api.QueryOptions{AllowStale: true})
	if err != nil || len(all) != 3 || meta.LastIndex != s.Index() {
		t.Fatalf("%v %v", all, err)
	}
	if e := all[1]; e.ServiceID != "1" || e.ServiceAddress != "10.0.0.1" || e.ServicePort != 7001 ||
		e.Node != "standin" || e.Address != "127.0.0.1" || e.ServiceMeta["k"] != "1" {
		t.Fatalf("entry: %+v", e)
	}
	if raft, _, err := c.Catalog().Service("immutd", "raft", nil); err != nil || len(raft) != 2 {
		t.Fatalf("tag: %v %v", raft, err)
	}
	if st, _, _ := do(t, "GET", s.URL+"/v1/catalog/service/immutd?filter="+url.QueryEscape(`ServiceID == "1"`), "", nil); st != 400 {
		t.Fatalf("filter on catalog: %d", st)
	}
}
