package mtls

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	"github.com/immutd/immutd/internal/pki"
	"github.com/immutd/immutd/internal/secretfile"
)

// DefaultServerName is the DNS SAN every agent certificate carries unless
// Config.ServerName says otherwise.
const DefaultServerName = "server.immutd"

// Config names the PEM files of an agent's TLS identity.
type Config struct {
	CAFile, CertFile, KeyFile string
	// ServerName is the DNS SAN every agent certificate must carry; peers
	// are verified against it (like Nomad's server.<region>.nomad), in
	// both directions. Default "server.immutd".
	ServerName string
}

// Identity is an agent's certificate, key and trusted CA. It is safe for
// concurrent use; Reload replaces the material for new handshakes.
type Identity struct {
	cfg       Config
	ephemeral bool
	cur       atomic.Pointer[material]
}

// material is one consistent, validated set of files.
type material struct {
	cert tls.Certificate // Leaf is set
	pool *x509.CertPool
}

// errMissingSAN says a certificate lacks the cluster's ServerName SAN.
type errMissingSAN struct {
	want string
	have []string
}

func (e *errMissingSAN) Error() string {
	return fmt.Sprintf("certificate lacks DNS SAN %q (has %v)", e.want, e.have)
}

// Load reads and validates the identity: the key must match the
// certificate, the certificate must chain to the CA for both server and
// client use, and it must carry the ServerName SAN. The key file must be
// readable by its owner only (see package secretfile). Errors name the
// file at fault.
func Load(cfg Config) (*Identity, error) {
	if cfg.ServerName == "" {
		cfg.ServerName = DefaultServerName
	}
	for _, f := range []struct{ name, val string }{{"ca file", cfg.CAFile}, {"cert file", cfg.CertFile}, {"key file", cfg.KeyFile}} {
		if f.val == "" {
			return nil, fmt.Errorf("mtls: %s is not set", f.name)
		}
	}
	m, err := loadMaterial(cfg)
	if err != nil {
		return nil, err
	}
	id := &Identity{cfg: cfg}
	id.cur.Store(m)
	return id, nil
}

// Reload re-reads and re-validates the files. On error the identity keeps
// its current material and the error is returned; on success new
// handshakes, in either direction, use the new certificate and CA.
// Established connections are not affected.
func (id *Identity) Reload() error {
	if id.ephemeral {
		return nil
	}
	m, err := loadMaterial(id.cfg)
	if err != nil {
		return err
	}
	id.cur.Store(m)
	return nil
}

// ServerName is the SAN that peers' certificates are checked for.
func (id *Identity) ServerName() string { return id.cfg.ServerName }

// Certificate returns the parsed certificate currently presented, for
// example to report its expiry.
func (id *Identity) Certificate() *x509.Certificate { return id.cur.Load().cert.Leaf }

// ServerTLS returns a configuration for accepting agent connections: TLS
// 1.3, a client certificate signed by the CA is required, and the client
// certificate must carry the ServerName SAN. Every handshake uses the
// identity's material at that moment, so one configuration serves across
// reloads. Session tickets are disabled so that every connection is
// verified against the current CA.
func (id *Identity) ServerTLS() *tls.Config {
	c := id.serverConfig(id.cur.Load())
	c.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) {
		return id.serverConfig(id.cur.Load()), nil
	}
	return c
}

func (id *Identity) serverConfig(m *material) *tls.Config {
	return &tls.Config{
		MinVersion:             tls.VersionTLS13,
		Certificates:           []tls.Certificate{m.cert},
		ClientAuth:             tls.RequireAndVerifyClientCert,
		ClientCAs:              m.pool,
		VerifyConnection:       id.verifyPeerSAN,
		SessionTicketsDisabled: true,
	}
}

// ClientTLS returns a configuration for dialing another agent: TLS 1.3,
// the peer must present a certificate signed by the CA carrying the
// ServerName SAN, and the client certificate presented is the identity's
// current one (reload aware). RootCAs is the CA as loaded when ClientTLS
// is called; call it per connection (as Mux does) to follow CA changes.
func (id *Identity) ClientTLS() *tls.Config {
	m := id.cur.Load()
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		RootCAs:    m.pool,
		ServerName: id.cfg.ServerName,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			c := id.cur.Load().cert
			return &c, nil
		},
		VerifyConnection: id.verifyPeerSAN,
	}
}

// verifyPeerSAN runs after chain verification and requires the peer's
// certificate to carry the ServerName DNS SAN.
func (id *Identity) verifyPeerSAN(cs tls.ConnectionState) error {
	if len(cs.PeerCertificates) == 0 {
		return errors.New("mtls: peer presented no certificate")
	}
	leaf := cs.PeerCertificates[0]
	if err := checkSAN(leaf, id.cfg.ServerName); err != nil {
		return fmt.Errorf("mtls: peer %q: %w", leaf.Subject.CommonName, err)
	}
	return nil
}

func checkSAN(c *x509.Certificate, name string) error {
	for _, n := range c.DNSNames {
		if strings.EqualFold(n, name) {
			return nil
		}
	}
	return &errMissingSAN{want: name, have: c.DNSNames}
}

// Bounds on the files an identity is read from.
const (
	maxCertFile = 1 << 20
	maxKeyFile  = 64 << 10
)

func loadMaterial(cfg Config) (*material, error) {
	caPEM, err := secretfile.ReadFile("ca file", cfg.CAFile, maxCertFile)
	if err != nil {
		return nil, fmt.Errorf("mtls: %w", err)
	}
	certPEM, err := secretfile.ReadFile("cert file", cfg.CertFile, maxCertFile)
	if err != nil {
		return nil, fmt.Errorf("mtls: %w", err)
	}
	keyPEM, err := secretfile.Read("mtls: key file", cfg.KeyFile, maxKeyFile)
	if err != nil {
		return nil, err
	}
	return newMaterial(cfg, caPEM, certPEM, keyPEM)
}

// newMaterial validates PEM material; cfg names the files in errors.
func newMaterial(cfg Config, caPEM, certPEM, keyPEM []byte) (*material, error) {
	pool := x509.NewCertPool()
	cas, err := parseCerts(caPEM)
	if err != nil {
		return nil, fmt.Errorf("mtls: ca file %s: %w", cfg.CAFile, err)
	}
	for _, c := range cas {
		if !c.IsCA {
			return nil, fmt.Errorf("mtls: ca file %s: certificate %q is not a CA", cfg.CAFile, c.Subject.CommonName)
		}
		pool.AddCert(c)
	}
	chain, err := parseCerts(certPEM)
	if err != nil {
		return nil, fmt.Errorf("mtls: cert file %s: %w", cfg.CertFile, err)
	}
	if b, _ := pem.Decode(keyPEM); b == nil || !strings.HasSuffix(b.Type, "PRIVATE KEY") {
		return nil, fmt.Errorf("mtls: key file %s: no PEM private key block", cfg.KeyFile)
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("mtls: key file %s does not fit cert file %s: %w", cfg.KeyFile, cfg.CertFile, err)
	}
	leaf := chain[0]
	pair.Leaf = leaf

	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	for _, usage := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
		opts := x509.VerifyOptions{Roots: pool, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{usage}}
		if _, err := leaf.Verify(opts); err != nil {
			return nil, fmt.Errorf("mtls: cert file %s does not verify against ca file %s for %s: %w", cfg.CertFile, cfg.CAFile, usageName(usage), err)
		}
	}
	if err := checkSAN(leaf, cfg.ServerName); err != nil {
		return nil, fmt.Errorf("mtls: cert file %s: %w", cfg.CertFile, err)
	}
	return &material{cert: pair, pool: pool}, nil
}

// Ephemeral returns an identity made at start and kept in memory only: a
// CA of its own and a certificate it signed, carrying serverName. No
// other process has that CA, so a cluster port serving with it accepts
// no connection at all: this is the identity of a single agent whose
// cluster block sets no tls, which has no peers to talk to. Reload keeps
// it.
func Ephemeral(name, serverName string) (*Identity, error) {
	if serverName == "" {
		serverName = DefaultServerName
	}
	caPEM, caKey, err := pki.NewCA("immutd ephemeral CA of "+name, ephemeralValidity)
	if err != nil {
		return nil, fmt.Errorf("mtls: ephemeral identity: %w", err)
	}
	certPEM, keyPEM, err := pki.NewCert(caPEM, caKey, name, []string{serverName}, nil, ephemeralValidity)
	if err != nil {
		return nil, fmt.Errorf("mtls: ephemeral identity: %w", err)
	}
	cfg := Config{CAFile: "(ephemeral)", CertFile: "(ephemeral)", KeyFile: "(ephemeral)", ServerName: serverName}
	m, err := newMaterial(cfg, caPEM, certPEM, keyPEM)
	if err != nil {
		return nil, err
	}
	id := &Identity{cfg: cfg, ephemeral: true}
	id.cur.Store(m)
	return id, nil
}

// ephemeralValidity outlasts any process; the identity is never written.
const ephemeralValidity = 100 * 365 * 24 * time.Hour

// IsEphemeral reports an identity made by Ephemeral.
func (id *Identity) IsEphemeral() bool { return id.ephemeral }

// parseCerts parses every CERTIFICATE block; there must be at least one
// and no other kind of block.
func parseCerts(data []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for i := 1; ; i++ {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("PEM block %d is %q, want CERTIFICATE", i, b.Type)
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("PEM block %d: %w", i, err)
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, errors.New("no PEM CERTIFICATE block")
	}
	return out, nil
}

func usageName(u x509.ExtKeyUsage) string {
	if u == x509.ExtKeyUsageServerAuth {
		return "server auth"
	}
	return "client auth"
}
