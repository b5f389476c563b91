package config

import (
	"fmt"
	"net/url"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/hcl/v2/hclsyntax"
)

// Traffic is a fleet's `traffic { ... }` block: the backends its
// instances are admitted to once healthy and drained from before they are
// terminated. A fleet without the block has no traffic gate.
type Traffic struct {
	// MinReady is how long an instance must stay healthy before it is
	// admitted. Default 10s.
	MinReady time.Duration `json:"min_ready"`
	// DrainDelay is the longest wait, after every backend confirmed that a
	// drained instance gets no new traffic, for its connections to end.
	// The wait ends early once every backend that can count connections
	// reports none (and none of the backends cannot). Default 30s.
	DrainDelay time.Duration `json:"drain_delay"`
	// KeepMin: an instance is never drained for its health while fewer
	// than this many other admitted instances are healthy: a fleet that
	// looks all unhealthy keeps its traffic (fails open). Default 1.
	KeepMin int `json:"keep_min"`
	// BackendTimeout is how long an admit, a drain, or the traffic step
	// of a terminate tries an unreachable backend before it gives up:
	// the instance is then neither admitted nor terminated, and the fleet
	// shows the backend as blocked. Default 2m.
	BackendTimeout time.Duration `json:"backend_timeout"`

	Files   []TrafficFile    `json:"files,omitempty"`
	HAProxy []TrafficHAProxy `json:"haproxy,omitempty"`
	Consul  []TrafficConsul  `json:"consul,omitempty"`
}

// TrafficFile is a `file "name" { path = ... }` backend: a Prometheus
// file_sd JSON file listing the admitted instances.
type TrafficFile struct {
	Name string `json:"name"`
	Path string `json:"path"`
}

// TrafficHAProxy is a `haproxy "name" { ... }` backend: servers of one
// HAProxy backend, switched over the Runtime API.
type TrafficHAProxy struct {
	Name string `json:"name"`
	// Socket is the admin socket (stats socket ... level admin).
	Socket string `json:"socket"`
	// Backend is the HAProxy backend the instances are servers of.
	Backend string `json:"backend"`
	// Check adds each server with HAProxy's own health check as well.
	Check bool `json:"check"`
}

// TrafficConsul is a `consul "name" { ... }` backend: the instances are
// registered at a Consul agent as instances of a service, with a TTL
// check that follows immutd's verdict.
type TrafficConsul struct {
	Name string `json:"name"`
	// Address of the Consul agent's HTTP API: "127.0.0.1:8500" or
	// "https://host:8501". Default 127.0.0.1:8500.
	Address       string            `json:"address"`
	Service       string            `json:"service"`
	Tags          []string          `json:"tags,omitempty"`
	Meta          map[string]string `json:"meta,omitempty"`
	TokenFile     string            `json:"token_file,omitempty"`
	CAFile        string            `json:"ca_file,omitempty"`
	CertFile      string            `json:"cert_file,omitempty"`
	KeyFile       string            `json:"key_file,omitempty"`
	TLSServerName string            `json:"tls_server_name,omitempty"`
}

// Backends counts the configured backends.
func (t *Traffic) Backends() int { return len(t.Files) + len(t.HAProxy) + len(t.Consul) }

// Traffic defaults and limits.
const (
	DefaultMinReady       = 10 * time.Second
	DefaultDrainDelay     = 30 * time.Second
	DefaultKeepMin        = 1
	DefaultBackendTimeout = 2 * time.Minute
	DefaultConsulAddress  = "127.0.0.1:8500"
	DefaultJoinService    = "immutd"
	maxTrafficWait        = time.Hour
	minBackendTimeout     = time.Second
	maxTrafficBackends    = 8
	maxConsulTags         = 32
	maxConsulTagLen       = 255
	maxConsulMeta         = 32
	maxConsulMetaKeyLen   = 128
	maxConsulMetaValueLen = 512
)

var (
	// HAProxy names allow letters, digits, '-', '_', '.' and ':'.
	haproxyNameRE = regexp.MustCompile(`^[A-Za-z0-9_.:-]{1,64}$`)
	// Consul service names are DNS labels.
	consulServiceRE = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$`)
	consulMetaKeyRE = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)
	backendNameRE   = regexp.MustCompile(`^[a-z0-9]([a-z0-9_-]{0,30}[a-z0-9])?$`)
)

func defaultTraffic() Traffic {
	return Traffic{MinReady: DefaultMinReady, DrainDelay: DefaultDrainDelay, KeepMin: DefaultKeepMin, BackendTimeout: DefaultBackendTimeout}
}

// traffic decodes the optional traffic block; nil when it is absent. A
// relative target file path is resolved against absDir, the fleet file's
// directory, as a relative image path is.
func (s *section) traffic(absDir string) *Traffic {
	b := s.block("traffic")
	if b == nil {
		return nil
	}
	t := defaultTraffic()
	ts := s.child(b)
	ts.duration("min_ready", 0, maxTrafficWait, &t.MinReady)
	ts.duration("drain_delay", 0, maxTrafficWait, &t.DrainDelay)
	ts.integer("keep_min", 0, maxFleetSize, &t.KeepMin)
	ts.duration("backend_timeout", minBackendTimeout, maxTrafficWait, &t.BackendTimeout)
	names := map[string]*hclsyntax.Block{}
	named := func(bb *hclsyntax.Block, cs *section) bool {
		name := bb.Labels[0]
		if !backendNameRE.MatchString(name) {
			s.d.errorf(bb.LabelRanges[0], cs.path, "invalid backend name; use 1 to 32 lowercase letters, digits, '-' and '_', starting and ending with a letter or digit")
			return false
		}
		if first, dup := names[name]; dup {
			s.d.errorf(bb.LabelRanges[0], cs.path, "duplicate backend name; the %s backend at %s already uses it", first.Type, rangePos(first.TypeRange))
			return false
		}
		names[name] = bb
		return true
	}
	for _, bb := range ts.labelled("file", "backend name") {
		cs := ts.child(bb)
		f := TrafficFile{Name: bb.Labels[0]}
		var p string
		switch cs.text("path", &p, checkTargetFile) {
		case missing:
			cs.required("path", "the path of the file_sd JSON file to write, as in \"/var/lib/immutd/targets/web.json\"")
		case valid:
			if !filepath.IsAbs(p) {
				p = filepath.Join(absDir, p)
			}
			f.Path = filepath.Clean(p)
		}
		cs.done()
		if named(bb, cs) {
			t.Files = append(t.Files, f)
		}
	}
	for _, bb := range ts.labelled("haproxy", "backend name") {
		cs := ts.child(bb)
		h := TrafficHAProxy{Name: bb.Labels[0]}
		if cs.text("socket", &h.Socket, checkSocketPath) == missing {
			cs.required("socket", "the absolute path of HAProxy's admin socket (stats socket ... level admin)")
		}
		if cs.text("backend", &h.Backend, checkHAProxyName) == missing {
			cs.required("backend", "the name of the HAProxy backend the instances are servers of")
		}
		cs.boolean("check", &h.Check)
		cs.done()
		if named(bb, cs) {
			t.HAProxy = append(t.HAProxy, h)
		}
	}
	for _, bb := range ts.labelled("consul", "backend name") {
		cs := ts.child(bb)
		c := TrafficConsul{Name: bb.Labels[0], Address: DefaultConsulAddress}
		cs.text("address", &c.Address, checkConsulAddress)
		if cs.text("service", &c.Service, checkConsulService) == missing {
			cs.required("service", "the Consul service name the instances are registered as")
		}
		cs.strList("tags", &c.Tags, checkConsulTag)
		if len(c.Tags) > maxConsulTags {
			cs.fail("tags", "must list at most %d tags, got %d", maxConsulTags, len(c.Tags))
		}
		cs.stringMap("meta", &c.Meta, checkConsulMeta)
		if len(c.Meta) > maxConsulMeta {
			cs.fail("meta", "must have at most %d keys (immutd adds its own), got %d", maxConsulMeta, len(c.Meta))
		}
		decodeConsulTLS(cs, c.Address, &c.TokenFile, &c.CAFile, &c.CertFile, &c.KeyFile, &c.TLSServerName)
		cs.done()
		if named(bb, cs) {
			t.Consul = append(t.Consul, c)
		}
	}
	switch n := t.Backends(); {
	case n == 0 && len(names) == 0:
		s.d.errorf(b.TypeRange, ts.path, "needs at least one backend: a file, haproxy or consul \"name\" { ... } block")
	case n > maxTrafficBackends:
		s.d.errorf(b.TypeRange, ts.path, "has %d backends; at most %d are allowed", n, maxTrafficBackends)
	}
	ts.done()
	return &t
}

// decodeConsulTLS decodes the ACL token file and the TLS settings of a
// block that talks to Consul at address.
func decodeConsulTLS(s *section, address string, token, ca, cert, key, serverName *string) {
	s.text("token_file", token, checkAbsPath)
	s.text("ca_file", ca, checkAbsPath)
	certGot := s.text("cert_file", cert, checkAbsPath)
	keyGot := s.text("key_file", key, checkAbsPath)
	if (certGot == missing) != (keyGot == missing) {
		s.fail("cert_file", "cert_file and key_file go together: set both for a client certificate, or neither")
	}
	s.text("tls_server_name", serverName, checkNotEmpty)
	if !strings.HasPrefix(address, "https://") {
		for _, name := range []string{"ca_file", "cert_file", "tls_server_name"} {
			if s.body.Attributes[name] != nil {
				s.fail(name, "is a TLS setting, but address %q is not https://", address)
			}
		}
	}
}

func checkAbsPath(p string) error {
	switch {
	case !filepath.IsAbs(p):
		return fmt.Errorf("must be an absolute path, got %q", p)
	case len(p) > 4096:
		return fmt.Errorf("must be at most 4096 bytes long, got %d", len(p))
	case strings.ContainsAny(p, "\x00\n\r"):
		return fmt.Errorf("must not contain NUL or line breaks, got %q", p)
	case filepath.Clean(p) != p:
		return fmt.Errorf("must be a clean path (no \"..\", \".\" or doubled slashes), got %q; write %q", p, filepath.Clean(p))
	}
	return nil
}

// maxSocketPath is the longest unix socket path (sun_path holds 108
// bytes with the terminating NUL).
const maxSocketPath = 107

func checkSocketPath(p string) error {
	if err := checkAbsPath(p); err != nil {
		return err
	}
	if len(p) > maxSocketPath {
		return fmt.Errorf("must be at most %d bytes long (the limit of a unix socket path), got %d", maxSocketPath, len(p))
	}
	return nil
}

func checkTargetFile(p string) error {
	switch {
	case p == "":
		return fmt.Errorf("must not be empty")
	case len(p) > 4096:
		return fmt.Errorf("must be at most 4096 bytes long, got %d", len(p))
	case strings.ContainsAny(p, "\x00\n\r"):
		return fmt.Errorf("must not contain NUL or line breaks, got %q", p)
	}
	if !strings.HasSuffix(p, ".json") {
		return fmt.Errorf("must name a .json file (Prometheus file_sd reads .json, .yml and .yaml; immutd writes JSON), got %q", p)
	}
	return nil
}

func checkHAProxyName(s string) error {
	if !haproxyNameRE.MatchString(s) {
		return fmt.Errorf("must be an HAProxy name of 1 to 64 letters, digits, '-', '_', '.' or ':', got %q", s)
	}
	return nil
}

func checkConsulService(s string) error {
	if !consulServiceRE.MatchString(s) {
		return fmt.Errorf("must be a DNS-compatible service name of 1 to 63 letters, digits and dashes, got %q", s)
	}
	return nil
}

func checkConsulTag(s string) error {
	switch {
	case s == "":
		return fmt.Errorf("must not be empty")
	case len(s) > maxConsulTagLen:
		return fmt.Errorf("must be at most %d bytes long, got %d", maxConsulTagLen, len(s))
	case strings.IndexFunc(s, func(r rune) bool { return r < ' ' || r == 0x7f }) >= 0:
		return fmt.Errorf("must not contain control characters, got %q", s)
	}
	return nil
}

func checkConsulMeta(k, v string) error {
	switch {
	case !consulMetaKeyRE.MatchString(k) || len(k) > maxConsulMetaKeyLen:
		return fmt.Errorf("meta key %q must be 1 to %d letters, digits, '-' and '_'", k, maxConsulMetaKeyLen)
	case strings.HasPrefix(strings.ToLower(k), "immutd-") || strings.HasPrefix(strings.ToLower(k), "consul-") || k == "external-source":
		return fmt.Errorf("meta key %q is reserved (immutd sets immutd-* and external-source; consul-* is Consul's)", k)
	case len(v) > maxConsulMetaValueLen:
		return fmt.Errorf("meta value of %q must be at most %d bytes long, got %d", k, maxConsulMetaValueLen, len(v))
	}
	return nil
}

func checkConsulAddress(s string) error {
	bad := fmt.Errorf("must be a Consul HTTP address like \"127.0.0.1:8500\" or \"https://consul.example:8501\", got %q", s)
	hostport := s
	if strings.Contains(s, "://") {
		u, err := url.Parse(s)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.User != nil {
			return bad
		}
		hostport = u.Host
	}
	host, err := splitAddr(hostport, 1)
	if err != nil || host == "" {
		return bad
	}
	return nil
}

// checkTrafficTargets refuses two fleets that write one target file or
// switch one HAProxy backend: each would undo the other's changes.
func (d *decoder) checkTrafficTargets(fleets []*Fleet) {
	files := map[string]string{}
	backends := map[string]string{}
	for _, f := range fleets {
		if f.Traffic == nil {
			continue
		}
		for _, t := range f.Traffic.Files {
			if other, dup := files[t.Path]; dup && other != f.Name {
				d.errorf(posRange(f.Pos), "fleet "+strconv.Quote(f.Name)+".traffic.file "+strconv.Quote(t.Name)+".path",
					"%q is the target file of fleet %q too; every fleet needs its own file", t.Path, other)
			}
			files[t.Path] = f.Name
		}
		for _, h := range f.Traffic.HAProxy {
			key := h.Socket + "\x00" + h.Backend
			if other, dup := backends[key]; dup && other != f.Name {
				d.errorf(posRange(f.Pos), "fleet "+strconv.Quote(f.Name)+".traffic.haproxy "+strconv.Quote(h.Name)+".backend",
					"HAProxy backend %q at %s is switched by fleet %q too; every fleet needs its own backend", h.Backend, h.Socket, other)
			}
			backends[key] = f.Name
		}
	}
}
