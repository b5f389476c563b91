// Package consul owns immutd's Consul traffic backend. It registers every
// admitted instance of a fleet as one instance of a Consul service on a
// Consul agent, with a single TTL check whose status immutd drives from its
// quorum health verdict, confirms each admit and drain by reading the
// catalog's passing set back (a blocking query), and removes what it
// registered. It talks to Consul through github.com/hashicorp/consul/api.
//
// Ownership. Every registration immutd makes has the service ID
// "immutd-<fleet>-<instance id>", the check ID "immutd-check-<fleet>-<instance
// id>" and the service meta external-source=immutd, immutd-fleet,
// immutd-instance (plus immutd-image-digest and immutd-version when known).
// Sync lists the agent's services filtered to those marks and never touches
// a service without all of them, so other services with the same name
// (registered by hand, by Nomad, by an older system) are left alone.
//
// Drain deregisters the service rather than putting it into maintenance
// mode: immutd never changes a running instance and never admits it again
// after a drain (a drain is always followed by a terminate), so there is
// nothing to keep; a deregistered service also disappears from every Consul
// view (DNS, catalog, health), whereas a maintenance check leaves a critical
// entry behind that dashboards and alerts see, and it persists across agent
// restarts until somebody removes it.
//
// Registrations live on the agent at Config.Address. When immutd's leader
// moves to another host whose Config.Address is a different (local) agent,
// the new leader cannot see the old agent's registrations: their TTL checks
// then expire and turn critical, so no traffic goes to them, and
// Config.DeregisterCriticalAfter, when set, lets Consul reap them.
package consul

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
	"go.uber.org/zap"

	"github.com/immutd/immutd/internal/secretfile"
)

// Config configures one Consul backend: one Consul service name on one
// Consul agent.
type Config struct {
	// Address is the Consul agent's HTTP address: "127.0.0.1:8500",
	// "http://host:8500" or "https://host:8501". Required.
	Address string
	// Service is the Consul service name the fleet's instances are
	// registered under: a DNS label (letters, digits, dashes; at most 63).
	// Required.
	Service string
	// Fleet, when set, narrows what this backend owns to the registrations
	// of that fleet: two fleets that share a service name (blue/green) must
	// each set it, or each one's Sync would remove the other's instances.
	// Admit refuses a member of another fleet.
	Fleet string
	// Tags are set on every registration.
	Tags []string
	// Meta is added to every registration's service meta, next to the keys
	// immutd sets itself (immutd-*, external-source), which it may not name.
	Meta map[string]string
	// TokenFile holds the Consul ACL token (read once, by New, with
	// secretfile.ReadToken: mode 0600 or stricter). "" sends no token.
	// The CONSUL_HTTP_TOKEN* environment variables are never used.
	TokenFile string
	// CAFile, CertFile and KeyFile configure TLS to Consul (an https://
	// Address): the CA that signs Consul's certificate (default: the system
	// roots) and a client certificate and key (both or neither; the key
	// file must be mode 0600 or stricter). TLSServerName overrides the name
	// the certificate is checked against.
	CAFile, CertFile, KeyFile, TLSServerName string
	// TTL is the TTL of the check immutd drives. Sync refreshes it every
	// pass, so it must be longer than the pass interval; when immutd stops
	// refreshing (it died, or lost leadership) the check turns critical
	// after TTL. Default 30s; at least 1s.
	TTL time.Duration
	// Grace is how long after New an immutd-owned registration whose
	// instance keep does not know is kept before Sync deregisters it, so a
	// freshly elected leader does not wipe live registrations before it has
	// its state. Default 1m.
	Grace time.Duration
	// Timeout bounds every request (a blocking read gets its wait time on
	// top). Default 5s.
	Timeout time.Duration
	// DeregisterCriticalAfter, when set (at least 1m, Consul's minimum),
	// lets Consul deregister a registration whose check has been critical
	// that long: the safety net for registrations nobody refreshes any more.
	// Sync registers an admitted member again if Consul reaped it.
	DeregisterCriticalAfter time.Duration
}

// Defaults.
const (
	DefaultTTL     = 30 * time.Second
	DefaultGrace   = time.Minute
	DefaultTimeout = 5 * time.Second
)

const (
	idPrefix    = "immutd-"
	checkPrefix = "immutd-check-"

	metaSource   = "external-source"
	sourceImmutd = "immutd"
	metaFleet    = "immutd-fleet"
	metaInstance = "immutd-instance"
	metaDigest   = "immutd-image-digest"
	metaVersion  = "immutd-version"

	// Consul's documented limits on service meta.
	maxMetaPairs    = 64
	maxMetaKeyLen   = 128
	maxMetaValueLen = 512
	ownMetaPairs    = 5

	// maxResponse bounds every response body read from Consul.
	maxResponse = 16 << 20
	// maxCertFile bounds the CA, certificate and key files.
	maxCertFile = 1 << 20
)

var (
	serviceNameRE = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$`)
	fleetRE       = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)
	metaKeyRE     = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)
)

// Backend is the Consul traffic backend (traffic.Backend).
type Backend struct {
	cfg       Config
	log       *zap.Logger
	client    *api.Client
	hc        *http.Client
	transport *http.Transport
	created   time.Time
	// now is the clock Sync's grace period is measured with; tests replace
	// it before first use.
	now func() time.Time

	mu sync.Mutex
	// seen holds the service IDs this process admitted (by Admit or
	// Sync); Sync removes those without waiting for the grace period.
	seen map[string]bool
}

// New validates cfg, reads the token and TLS files and builds the Consul
// client. It does not connect.
func New(cfg Config, log *zap.Logger) (*Backend, error) {
	if log == nil {
		log = zap.NewNop()
	}
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	scheme, hostport, err := cfg.splitAddress()
	if err != nil {
		return nil, err
	}
	token := ""
	if cfg.TokenFile != "" {
		if token, err = secretfile.ReadToken("consul token_file", cfg.TokenFile); err != nil {
			return nil, fmt.Errorf("consul: %w", err)
		}
	}
	tlsConf, err := cfg.tlsConfig(hostport)
	if err != nil {
		return nil, err
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.Proxy = nil
	tr.TLSClientConfig = tlsConf
	tr.MaxIdleConnsPerHost = 16
	// The client's own token handling reads CONSUL_HTTP_TOKEN and
	// CONSUL_HTTP_TOKEN_FILE when Token is empty; a non-empty placeholder
	// keeps it from doing so, and the transport replaces the header on
	// every request with the token of the token file (or none).
	hc := &http.Client{Transport: &boundTransport{base: tr, token: token, limit: maxResponse}}
	client, err := api.NewClient(&api.Config{
		Address:    hostport,
		Scheme:     scheme,
		HttpClient: hc,
		Token:      "immutd-token-set-by-transport",
	})
	if err != nil {
		return nil, fmt.Errorf("consul: address: %w", err)
	}
	return &Backend{
		cfg:       cfg,
		log:       log.Named("consul").With(zap.String("service", cfg.Service)),
		client:    client,
		hc:        hc,
		transport: tr,
		created:   time.Now(),
		now:       time.Now,
		seen:      map[string]bool{},
	}, nil
}

func (c *Config) defaults() error {
	if c.Service == "" {
		return errors.New("consul: service: required")
	}
	if !serviceNameRE.MatchString(c.Service) {
		return fmt.Errorf("consul: service %q: must be a DNS label: 1-63 letters, digits and dashes, starting and ending with a letter or digit", c.Service)
	}
	if c.Fleet != "" && !fleetRE.MatchString(c.Fleet) {
		return fmt.Errorf("consul: fleet %q: must be 1-64 letters, digits, '.', '_' or '-'", c.Fleet)
	}
	for i, tag := range c.Tags {
		if tag == "" || len(tag) > maxMetaValueLen || strings.ContainsFunc(tag, func(r rune) bool { return r < ' ' || r == 0x7f }) {
			return fmt.Errorf("consul: tags[%d] %q: must be 1-%d printable characters", i, tag, maxMetaValueLen)
		}
	}
	if err := validateMeta(c.Meta); err != nil {
		return err
	}
	for _, d := range []struct {
		name string
		v    *time.Duration
		def  time.Duration
		min  time.Duration
	}{
		{"ttl", &c.TTL, DefaultTTL, time.Second},
		{"grace", &c.Grace, DefaultGrace, 0},
		{"timeout", &c.Timeout, DefaultTimeout, time.Millisecond},
	} {
		if *d.v == 0 {
			*d.v = d.def
		}
		if *d.v < d.min {
			return fmt.Errorf("consul: %s %s: must be at least %s", d.name, *d.v, d.min)
		}
	}
	if c.DeregisterCriticalAfter != 0 && c.DeregisterCriticalAfter < time.Minute {
		return fmt.Errorf("consul: deregister_critical_after %s: Consul's minimum is 1m", c.DeregisterCriticalAfter)
	}
	return nil
}

func validateMeta(meta map[string]string) error {
	if len(meta) > maxMetaPairs-ownMetaPairs {
		return fmt.Errorf("consul: meta: %d pairs; Consul allows %d and immutd sets %d itself, so at most %d", len(meta), maxMetaPairs, ownMetaPairs, maxMetaPairs-ownMetaPairs)
	}
	keys := make([]string, 0, len(meta))
	for k := range meta {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		switch {
		case k == "" || len(k) > maxMetaKeyLen || !metaKeyRE.MatchString(k):
			return fmt.Errorf("consul: meta key %q: must be 1-%d ASCII letters, digits, '-' or '_'", k, maxMetaKeyLen)
		case strings.HasPrefix(strings.ToLower(k), "consul-"):
			return fmt.Errorf("consul: meta key %q: the prefix consul- is reserved by Consul", k)
		case strings.HasPrefix(k, idPrefix) || k == metaSource:
			return fmt.Errorf("consul: meta key %q: immutd sets %s and the immutd-* keys itself", k, metaSource)
		case len(meta[k]) > maxMetaValueLen:
			return fmt.Errorf("consul: meta %q: the value has %d bytes; Consul allows %d", k, len(meta[k]), maxMetaValueLen)
		}
	}
	return nil
}

// splitAddress returns the scheme and host:port of the address.
func (c *Config) splitAddress() (scheme, hostport string, err error) {
	if c.Address == "" {
		return "", "", errors.New("consul: address: required")
	}
	scheme, hostport = "http", c.Address
	if s, rest, ok := strings.Cut(c.Address, "://"); ok {
		scheme, hostport = s, strings.TrimSuffix(rest, "/")
	}
	if scheme != "http" && scheme != "https" {
		return "", "", fmt.Errorf("consul: address %q: the scheme must be http or https", c.Address)
	}
	host, port, err := net.SplitHostPort(hostport)
	if err != nil || host == "" || strings.ContainsAny(hostport, "/?#@") {
		return "", "", fmt.Errorf("consul: address %q: must be host:port, optionally after http:// or https://", c.Address)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return "", "", fmt.Errorf("consul: address %q: bad port %q", c.Address, port)
	}
	if scheme == "http" && (c.CAFile != "" || c.CertFile != "" || c.KeyFile != "" || c.TLSServerName != "") {
		return "", "", fmt.Errorf("consul: address %q: ca_file, cert_file, key_file and tls_server_name need an https:// address", c.Address)
	}
	return scheme, hostport, nil
}

// tlsConfig builds the TLS client configuration from the files, never
// from CONSUL_* environment variables.
func (c *Config) tlsConfig(hostport string) (*tls.Config, error) {
	conf := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: c.TLSServerName}
	if conf.ServerName == "" {
		conf.ServerName, _, _ = net.SplitHostPort(hostport)
	}
	if c.CAFile != "" {
		pem, err := secretfile.ReadFile("consul ca_file", c.CAFile, maxCertFile)
		if err != nil {
			return nil, fmt.Errorf("consul: %w", err)
		}
		conf.RootCAs = x509.NewCertPool()
		if !conf.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("consul: ca_file %s: no PEM certificate in it", c.CAFile)
		}
	}
	if (c.CertFile == "") != (c.KeyFile == "") {
		return nil, errors.New("consul: cert_file and key_file: set both or neither")
	}
	if c.CertFile != "" {
		certPEM, err := secretfile.ReadFile("consul cert_file", c.CertFile, maxCertFile)
		if err != nil {
			return nil, fmt.Errorf("consul: %w", err)
		}
		keyPEM, err := secretfile.Read("consul key_file", c.KeyFile, maxCertFile)
		if err != nil {
			return nil, fmt.Errorf("consul: %w", err)
		}
		cert, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			return nil, fmt.Errorf("consul: cert_file %s and key_file %s: %w", c.CertFile, c.KeyFile, err)
		}
		conf.Certificates = []tls.Certificate{cert}
	}
	return conf, nil
}

// Name identifies the backend: consul "web".
func (b *Backend) Name() string { return "consul " + strconv.Quote(b.cfg.Service) }

// Close releases idle connections to Consul.
func (b *Backend) Close() error {
	b.transport.CloseIdleConnections()
	return nil
}

func (b *Backend) markSeen(id string) {
	b.mu.Lock()
	b.seen[id] = true
	b.mu.Unlock()
}

func (b *Backend) forget(id string) {
	b.mu.Lock()
	delete(b.seen, id)
	b.mu.Unlock()
}

func (b *Backend) wasSeen(id string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.seen[id]
}
