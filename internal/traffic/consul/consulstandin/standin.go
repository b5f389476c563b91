// Package consulstandin is a test stand-in for the handful of Consul HTTP
// endpoints immutd's Consul traffic backend uses. It is not a Consul: one
// node, one datacenter, no raft, no anti-entropy, no DNS, only TTL checks,
// and only the small subset of the filter language immutd sends. Tests run
// the backend's contract suite against it, and the same suite against a
// real Consul agent when CONSUL_HTTP_ADDR is set.
//
// It follows hashicorp/consul website/content/api-docs: agent/service.mdx
// (register with replace-existing-checks, deregister, maintenance, list),
// agent/check.mdx (list, TTL update), health.mdx (service, passing),
// catalog.mdx (service), status.mdx (leader) and features/blocking.mdx
// (X-Consul-Index, index, wait). Where the agent's code is stricter than
// its docs, the stand-in does what the agent does: deregistering an
// unknown service ID and updating an unknown check answer 404, and
// registering a check ID that already exists keeps its status and output.
//
//	PUT /v1/agent/service/register[?replace-existing-checks]  TTL checks only
//	PUT /v1/agent/service/deregister/:id
//	PUT /v1/agent/service/maintenance/:id?enable=&reason=
//	PUT /v1/agent/check/update/:id     {"Status","Output"}; resets the TTL clock
//	GET /v1/agent/services?filter=     GET /v1/agent/checks?filter=
//	GET /v1/health/service/:name?passing&tag=&index=&wait=
//	GET /v1/catalog/service/:name?tag=&index=&wait=
//	GET /v1/status/leader
//
// A filter is one or more `Selector == "value"` terms joined by `and`,
// over ID, Service, Address and Meta.<key> / Meta["<key>"] for services and
// CheckID, Name, Node, Status, Notes, Type, ServiceID and ServiceName for
// checks; anything else answers 400. The one X-Consul-Index moves on every
// write and every TTL expiry; a blocking GET returns once it passes the
// request's index or after wait (default 5m, at most 10m, no jitter). With
// Options.Token set, a write without that X-Consul-Token answers 403, a
// read without one an empty result with X-Consul-Results-Filtered-By-ACLs,
// and any other token 403 "ACL not found". Request bodies are limited to
// 1 MiB (413).
package consulstandin

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

const (
	nodeName, nodeAddress, nodeID = "standin", "127.0.0.1", "5c7e2a8e-0000-4000-8000-000000000001"
	passing, critical             = "passing", "critical"

	maxBody     = 1 << 20
	maxOutput   = 4096 // the agent's default OutputMaxSize
	maintPrefix = "_service_maintenance:"
	defaultWait = 5 * time.Minute
	maxWait     = 10 * time.Minute
)

// Options configure a Server.
type Options struct {
	// Token, when set, is the only ACL token the stand-in accepts.
	Token string
	// Now is the clock TTLs are measured with. Nil means time.Now, with a
	// timer per TTL check that expires it; with a clock of its own the test
	// calls Expire after moving it (every request also expires what is due).
	Now func() time.Time
}

// Server is the stand-in: an http.Handler, and its address once started.
type Server struct {
	// Addr is host:port and URL http://host:port, once started.
	Addr, URL string

	opts      Options
	realClock bool
	mux       *http.ServeMux
	httpSrv   *httptest.Server

	mu       sync.Mutex
	index    uint64
	changed  chan struct{} // closed and replaced on every write
	waiters  int
	services map[string]*service
	checks   map[string]*check
	closed   bool
}

type weights struct{ Passing, Warning int }

type service struct {
	ID, Service, Address, Datacenter string
	Tags                             []string
	Port                             int
	Meta                             map[string]string
	Weights                          weights
	EnableTagOverride                bool
	CreateIndex, ModifyIndex         uint64
}

type check struct {
	Node, CheckID, Name, Status, Notes, Output, ServiceID, ServiceName, Type string
	ServiceTags                                                              []string
	CreateIndex, ModifyIndex                                                 uint64

	ttl      time.Duration // 0: not a TTL check (maintenance)
	deadline time.Time
	expired  bool
	timer    *time.Timer
}

// New returns a stand-in that is not listening; it is an http.Handler.
func New(opts Options) *Server {
	s := &Server{opts: opts, index: 1, changed: make(chan struct{}),
		services: map[string]*service{}, checks: map[string]*check{}}
	if s.opts.Now == nil {
		s.opts.Now, s.realClock = time.Now, true
	}
	m := http.NewServeMux()
	m.HandleFunc("PUT /v1/agent/service/register", s.register)
	m.HandleFunc("PUT /v1/agent/service/deregister/{id}", s.deregister)
	m.HandleFunc("PUT /v1/agent/service/maintenance/{id}", s.maintenance)
	m.HandleFunc("PUT /v1/agent/check/update/{id}", s.update)
	m.HandleFunc("GET /v1/agent/services", func(w http.ResponseWriter, r *http.Request) {
		list(s, w, r, s.services, (*service).field)
	})
	m.HandleFunc("GET /v1/agent/checks", func(w http.ResponseWriter, r *http.Request) {
		list(s, w, r, s.checks, (*check).field)
	})
	m.HandleFunc("GET /v1/health/service/{name}", s.health)
	m.HandleFunc("GET /v1/catalog/service/{name}", s.catalog)
	m.HandleFunc("GET /v1/status/leader", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, nodeAddress+":8300")
	})
	s.mux = m
	return s
}

// Start starts a stand-in on a loopback port and stops it when t ends.
func Start(t testing.TB, opts Options) *Server {
	t.Helper()
	s := New(opts)
	s.httpSrv = httptest.NewServer(s)
	s.URL = s.httpSrv.URL
	s.Addr = strings.TrimPrefix(s.URL, "http://")
	t.Cleanup(s.Close)
	return s
}

// Close stops the server (when started) and the TTL timers.
func (s *Server) Close() {
	s.mu.Lock()
	s.closed = true
	for _, c := range s.checks {
		c.stopTimer()
	}
	s.mu.Unlock()
	if s.httpSrv != nil {
		s.httpSrv.Close()
	}
}

// Index is the current X-Consul-Index.
func (s *Server) Index() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.index
}

// Waiters is how many blocking GETs are waiting right now.
func (s *Server) Waiters() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.waiters
}

// Expire turns every TTL check whose TTL has run out by Options.Now
// critical, as the agent does.
func (s *Server) Expire() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.expireLocked()
}

func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.Expire()
	s.mux.ServeHTTP(w, r)
}

func (s *Server) bumpLocked() uint64 {
	s.index++
	close(s.changed)
	s.changed = make(chan struct{})
	return s.index
}

func (s *Server) expireLocked() {
	now := s.opts.Now()
	for _, c := range s.checks {
		if c.ttl > 0 && !c.expired && !now.Before(c.deadline) {
			c.expired, c.Status, c.Output = true, critical, "TTL expired"
			c.ModifyIndex = s.bumpLocked()
		}
	}
}

// touchLocked restarts c's TTL clock.
func (s *Server) touchLocked(c *check) {
	c.expired = false
	c.deadline = s.opts.Now().Add(c.ttl)
	c.stopTimer()
	if s.realClock && !s.closed {
		c.timer = time.AfterFunc(c.ttl, s.Expire)
	}
}

func (c *check) stopTimer() {
	if c.timer != nil {
		c.timer.Stop()
		c.timer = nil
	}
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}

func fail(w http.ResponseWriter, code int, format string, args ...any) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(code)
	fmt.Fprintf(w, format, args...)
}

// allow applies the ACL rules; filtered is true for an anonymous read.
func (s *Server) allow(w http.ResponseWriter, r *http.Request, write bool) (ok, filtered bool) {
	switch tok := r.Header.Get("X-Consul-Token"); {
	case s.opts.Token == "" || tok == s.opts.Token:
		return true, false
	case tok != "":
		fail(w, http.StatusForbidden, "ACL not found")
		return false, false
	case write:
		fail(w, http.StatusForbidden, "Permission denied: anonymous token lacks permission")
		return false, false
	}
	w.Header().Set("X-Consul-Results-Filtered-By-ACLs", "true")
	return true, true
}

func decode(w http.ResponseWriter, r *http.Request, v any) bool {
	err := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBody)).Decode(v)
	var tooBig *http.MaxBytesError
	switch {
	case errors.As(err, &tooBig):
		fail(w, http.StatusRequestEntityTooLarge, "Request body too large, max size: %d bytes", maxBody)
	case err != nil:
		fail(w, http.StatusBadRequest, "Request decode failed: %v", err)
	}
	return err == nil
}

func unknownService(w http.ResponseWriter, id string) {
	fail(w, http.StatusNotFound, "Unknown service ID %q. Ensure that the service ID is passed, not the service name.", id)
}

// checkDef is a check of a registration; one without a TTL is of a kind
// the stand-in does not run (HTTP, TCP, script, ...).
type checkDef struct{ CheckID, ID, Name, TTL, Status, Notes, Interval string }

type registration struct {
	ID, Name, Address, Kind string
	Tags                    []string
	Port                    int
	Meta                    map[string]string
	Weights                 *weights
	EnableTagOverride       bool
	Check                   *checkDef
	Checks                  []*checkDef
}

var metaKeyRE = regexp.MustCompile(`^[A-Za-z0-9_-]{1,128}$`)

// badMeta applies Consul's documented service meta limits.
func badMeta(meta map[string]string) string {
	if len(meta) > 64 {
		return "Node metadata cannot contain more than 64 key/value pairs"
	}
	for k, v := range meta {
		switch {
		case !metaKeyRE.MatchString(k):
			return fmt.Sprintf("Key %q must be 1-128 letters, digits, '-' or '_'", k)
		case strings.HasPrefix(k, "consul-"):
			return "Key prefix 'consul-' is reserved for internal use"
		case len(v) > 512:
			return "Value is too long (limit: 512 characters)"
		}
	}
	return ""
}

func (s *Server) register(w http.ResponseWriter, r *http.Request) {
	var reg registration
	if ok, _ := s.allow(w, r, true); !ok || !decode(w, r, &reg) {
		return
	}
	defs := reg.Checks
	if reg.Check != nil {
		defs = append([]*checkDef{reg.Check}, defs...)
	}
	bad := ""
	switch {
	case reg.Name == "":
		bad = "Missing service name"
	case reg.Kind != "":
		bad = "stand-in: service kinds are not supported"
	case badMeta(reg.Meta) != "":
		bad = "Invalid Service Meta: " + badMeta(reg.Meta)
	}
	ttls := make([]time.Duration, len(defs))
	for i, d := range defs {
		ttl, err := time.ParseDuration(d.TTL)
		switch {
		case d.TTL == "":
			bad = "stand-in: only TTL checks are supported"
		case err != nil || ttl <= 0:
			bad = fmt.Sprintf("Check is not valid: invalid TTL %q", d.TTL)
		case d.Interval != "":
			bad = "Check is not valid: TTL and Interval are mutually exclusive"
		case d.Status != "" && d.Status != passing && d.Status != "warning" && d.Status != critical:
			bad = fmt.Sprintf("Check is not valid: invalid Status %q", d.Status)
		}
		ttls[i] = ttl
	}
	if bad != "" {
		fail(w, http.StatusBadRequest, "%s", bad)
		return
	}
	reg.ID = cmp(reg.ID, reg.Name)
	tags, wt := append([]string{}, reg.Tags...), weights{Passing: 1, Warning: 1}
	if reg.Weights != nil {
		wt = *reg.Weights
	}
	if reg.Meta == nil {
		reg.Meta = map[string]string{}
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	idx := s.bumpLocked()
	svc := &service{ID: reg.ID, Service: reg.Name, Address: reg.Address, Datacenter: "dc1", Tags: tags,
		Port: reg.Port, Meta: reg.Meta, Weights: wt, EnableTagOverride: reg.EnableTagOverride,
		CreateIndex: idx, ModifyIndex: idx}
	if old := s.services[reg.ID]; old != nil {
		svc.CreateIndex = old.CreateIndex
	}
	s.services[reg.ID] = svc
	keep := map[string]bool{}
	for i, d := range defs {
		id := cmp(d.CheckID, d.ID)
		if id == "" {
			id = "service:" + reg.ID
			if len(defs) > 1 {
				id += ":" + strconv.Itoa(i+1)
			}
		}
		keep[id] = true
		c := &check{Node: nodeName, CheckID: id, Name: cmp(d.Name, fmt.Sprintf("Service '%s' check", reg.Name)),
			Status: cmp(d.Status, critical), Notes: d.Notes, ServiceID: reg.ID, ServiceName: reg.Name,
			Type: "ttl", ServiceTags: tags, CreateIndex: idx, ModifyIndex: idx, ttl: ttls[i]}
		if old := s.checks[id]; old != nil {
			// The agent carries an existing check's state over (agent.go).
			c.Status, c.Output, c.CreateIndex = old.Status, old.Output, old.CreateIndex
			old.stopTimer()
		}
		s.checks[id] = c
		s.touchLocked(c)
	}
	if q := r.URL.Query(); q.Has("replace-existing-checks") && q.Get("replace-existing-checks") != "false" {
		s.removeChecksLocked(reg.ID, keep)
	}
}

// removeChecksLocked removes the checks of service id that keep does not
// name.
func (s *Server) removeChecksLocked(id string, keep map[string]bool) {
	for cid, c := range s.checks {
		if c.ServiceID == id && !keep[cid] {
			c.stopTimer()
			delete(s.checks, cid)
		}
	}
}

func cmp(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

func (s *Server) deregister(w http.ResponseWriter, r *http.Request) {
	if ok, _ := s.allow(w, r, true); !ok {
		return
	}
	id := r.PathValue("id")
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.services[id] == nil {
		unknownService(w, id)
		return
	}
	delete(s.services, id)
	s.removeChecksLocked(id, nil)
	s.bumpLocked()
}

func (s *Server) maintenance(w http.ResponseWriter, r *http.Request) {
	if ok, _ := s.allow(w, r, true); !ok {
		return
	}
	id, q := r.PathValue("id"), r.URL.Query()
	enable, err := strconv.ParseBool(q.Get("enable"))
	if err != nil {
		fail(w, http.StatusBadRequest, "Missing or invalid value for enable: %q", q.Get("enable"))
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	svc, cid := s.services[id], maintPrefix+id
	switch {
	case svc == nil:
		unknownService(w, id)
	case enable && s.checks[cid] == nil:
		idx := s.bumpLocked()
		reason := cmp(q.Get("reason"), "Maintenance mode is enabled for this service, but no reason was provided. This is a default message.")
		s.checks[cid] = &check{Node: nodeName, CheckID: cid, Name: "Service Maintenance Mode", Status: critical,
			Notes: reason, ServiceID: id, ServiceName: svc.Service, Type: "maintenance", ServiceTags: svc.Tags,
			CreateIndex: idx, ModifyIndex: idx}
	case !enable && s.checks[cid] != nil:
		delete(s.checks, cid)
		s.bumpLocked()
	}
}

func (s *Server) update(w http.ResponseWriter, r *http.Request) {
	var u struct{ Status, Output string }
	if ok, _ := s.allow(w, r, true); !ok || !decode(w, r, &u) {
		return
	}
	id := r.PathValue("id")
	s.mu.Lock()
	defer s.mu.Unlock()
	switch c := s.checks[id]; {
	case c == nil:
		fail(w, http.StatusNotFound, "Unknown check ID %q. Ensure that the check ID is passed, not the check name.", id)
	case c.ttl == 0:
		fail(w, http.StatusInternalServerError, "CheckID %q does not have associated TTL", id)
	case u.Status != passing && u.Status != "warning" && u.Status != critical:
		fail(w, http.StatusBadRequest, "Invalid check status: %q", u.Status)
	default:
		c.Status, c.Output = u.Status, u.Output[:min(len(u.Output), maxOutput)]
		c.ModifyIndex = s.bumpLocked()
		s.touchLocked(c)
	}
}

func (svc *service) field(sel string) (string, bool) {
	if k, ok := strings.CutPrefix(sel, "Meta."); ok {
		return svc.Meta[k], true
	}
	v, ok := map[string]string{"ID": svc.ID, "Service": svc.Service, "Address": svc.Address}[sel]
	return v, ok
}

func (c *check) field(sel string) (string, bool) {
	v, ok := map[string]string{"CheckID": c.CheckID, "Name": c.Name, "Node": c.Node, "Status": c.Status,
		"Notes": c.Notes, "Type": c.Type, "ServiceID": c.ServiceID, "ServiceName": c.ServiceName}[sel]
	return v, ok
}

// term is one `Selector == "value"`; Meta["k"] is read as Meta.k.
var termRE = regexp.MustCompile(`^\s*([A-Za-z][A-Za-z0-9_]*)(?:\.([A-Za-z][A-Za-z0-9_]*)|\["([^"\\]*)"\])?\s*==\s*("(?:[^"\\]|\\.)*")\s*(and\s|$)`)

type term struct{ sel, val string }

// parseFilter parses the subset of the filter language the stand-in
// knows; known says whether a selector exists.
func parseFilter(expr string, known func(sel string) bool) ([]term, error) {
	var terms []term
	for rest := strings.TrimSpace(expr); rest != ""; {
		m := termRE.FindStringSubmatch(rest)
		if m == nil || (m[5] != "" && strings.TrimSpace(rest[len(m[0]):]) == "") {
			return nil, fmt.Errorf("stand-in: filter %q: only `Selector == \"value\"` terms joined by `and` are supported", expr)
		}
		sel := m[1]
		if k := m[2] + m[3]; k != "" {
			sel += "." + k
		}
		val, err := strconv.Unquote(m[4])
		if err != nil || !known(sel) {
			return nil, fmt.Errorf("stand-in: filter %q: selector %q or value %s is not supported", expr, sel, m[4])
		}
		terms = append(terms, term{sel, val})
		rest = rest[len(m[0]):]
	}
	return terms, nil
}

// list answers GET /v1/agent/services or /v1/agent/checks: the items of
// the map that pass the filter, by ID.
func list[T any](s *Server, w http.ResponseWriter, r *http.Request, items map[string]*T, field func(*T, string) (string, bool)) {
	ok, filtered := s.allow(w, r, false)
	if !ok {
		return
	}
	var zero T
	terms, err := parseFilter(r.URL.Query().Get("filter"), func(sel string) bool { _, ok := field(&zero, sel); return ok })
	if err != nil {
		fail(w, http.StatusBadRequest, "%v", err)
		return
	}
	out := map[string]T{}
	s.mu.Lock()
	for id, it := range items {
		match := !filtered
		for _, t := range terms {
			v, _ := field(it, t.sel)
			match = match && v == t.val
		}
		if match {
			out[id] = *it
		}
	}
	s.mu.Unlock()
	writeJSON(w, out)
}

// read runs a blocking query as features/blocking.mdx describes, then
// answers with X-Consul-Index and what build returns for the services
// named :name (with ?tag, if given), in ID order.
func (s *Server) read(w http.ResponseWriter, r *http.Request, build func(svc *service, filtered bool) any) {
	ok, filtered := s.allow(w, r, false)
	if !ok {
		return
	}
	q := r.URL.Query()
	index, err := strconv.ParseUint(cmp(q.Get("index"), "0"), 10, 64)
	wait, werr := time.ParseDuration(cmp(q.Get("wait"), defaultWait.String()))
	switch {
	case q.Has("filter"):
		fail(w, http.StatusBadRequest, "stand-in: filter is not supported on this endpoint")
		return
	case err != nil || werr != nil || wait < 0:
		fail(w, http.StatusBadRequest, "Invalid index or wait: %q, %q", q.Get("index"), q.Get("wait"))
		return
	}
	timer := time.NewTimer(min(wait, maxWait))
	defer timer.Stop()
	s.mu.Lock()
	defer s.mu.Unlock()
	for index > 0 && s.index <= index {
		ch := s.changed
		s.waiters++
		s.mu.Unlock()
		select {
		case <-ch:
		case <-timer.C:
			index = 0
		case <-r.Context().Done():
			index = 0
		}
		s.mu.Lock()
		s.waiters--
		s.expireLocked()
	}
	name, tag := r.PathValue("name"), q.Get("tag")
	var svcs []*service
	for _, svc := range s.services {
		if svc.Service == name && (tag == "" || slices.Contains(svc.Tags, tag)) {
			svcs = append(svcs, svc)
		}
	}
	slices.SortFunc(svcs, func(a, b *service) int { return strings.Compare(a.ID, b.ID) })
	out := []any{}
	for _, svc := range svcs {
		if e := build(svc, filtered); e != nil {
			out = append(out, e)
		}
	}
	w.Header().Set("X-Consul-Index", strconv.FormatUint(s.index, 10))
	w.Header().Set("X-Consul-KnownLeader", "true")
	w.Header().Set("X-Consul-LastContact", "0")
	writeJSON(w, out)
}

var theNode = map[string]any{"ID": nodeID, "Node": nodeName, "Address": nodeAddress, "Datacenter": "dc1",
	"Meta": map[string]string{}}

func (s *Server) health(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	onlyPassing := q.Has("passing") && q.Get("passing") != "false" && q.Get("passing") != "0"
	s.read(w, r, func(svc *service, filtered bool) any {
		checks := []check{{Node: nodeName, CheckID: "serfHealth", Name: "Serf Health Status", Status: passing,
			Output: "Agent alive and reachable", ServiceTags: []string{}, CreateIndex: 1, ModifyIndex: 1}}
		all := true
		for _, c := range s.checks {
			if c.ServiceID == svc.ID {
				checks = append(checks, *c)
				all = all && c.Status == passing
			}
		}
		slices.SortFunc(checks[1:], func(a, b check) int { return strings.Compare(a.CheckID, b.CheckID) })
		if filtered || (onlyPassing && !all) {
			return nil
		}
		return map[string]any{"Node": theNode, "Service": *svc, "Checks": checks}
	})
}

func (s *Server) catalog(w http.ResponseWriter, r *http.Request) {
	s.read(w, r, func(svc *service, filtered bool) any {
		if filtered {
			return nil
		}
		return map[string]any{"ID": nodeID, "Node": nodeName, "Address": nodeAddress, "Datacenter": "dc1",
			"NodeMeta": theNode["Meta"], "ServiceID": svc.ID, "ServiceName": svc.Service, "ServiceAddress": svc.Address,
			"ServiceTags": svc.Tags, "ServiceMeta": svc.Meta, "ServicePort": svc.Port, "ServiceWeights": svc.Weights,
			"ServiceEnableTagOverride": svc.EnableTagOverride, "CreateIndex": svc.CreateIndex, "ModifyIndex": svc.ModifyIndex}
	})
}
