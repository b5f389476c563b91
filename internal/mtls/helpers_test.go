package mtls

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/immutd/immutd/internal/pki"
)

// guard bounds every wait in these tests; nothing should come close.
const guard = 10 * time.Second

type testCA struct{ certPEM, keyPEM []byte }

func newTestCA(t *testing.T, cn string) testCA {
	t.Helper()
	c, k, err := pki.NewCA(cn, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return testCA{c, k}
}

func (ca testCA) issue(t *testing.T, cn string, dns ...string) (certPEM, keyPEM []byte) {
	t.Helper()
	c, k, err := pki.NewCert(ca.certPEM, ca.keyPEM, cn, dns, []net.IP{net.ParseIP("127.0.0.1")}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return c, k
}

// writeIdentity writes ca.pem, <name>.pem and <name>-key.pem into dir and
// returns the Config naming them.
func writeIdentity(t *testing.T, dir, name string, ca testCA, certPEM, keyPEM []byte) Config {
	t.Helper()
	caFile := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(caFile, ca.certPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := pki.WriteFiles(dir, name, certPEM, keyPEM); err != nil {
		t.Fatal(err)
	}
	return Config{CAFile: caFile, CertFile: filepath.Join(dir, name+".pem"), KeyFile: filepath.Join(dir, name+"-key.pem")}
}

// newIdentity issues a certificate with the default ServerName SAN and
// loads it.
func newIdentity(t *testing.T, ca testCA, cn string) *Identity {
	t.Helper()
	c, k := ca.issue(t, cn, DefaultServerName, cn+".node.immutd")
	id, err := Load(writeIdentity(t, t.TempDir(), cn, ca, c, k))
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// tlsClientConfig builds a raw client configuration presenting the given
// key pair (none when certPEM is nil) and trusting ca.
func tlsClientConfig(t *testing.T, ca testCA, certPEM, keyPEM []byte) *tls.Config {
	t.Helper()
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ca.certPEM) {
		t.Fatal("bad CA PEM")
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: pool, ServerName: DefaultServerName}
	if certPEM != nil {
		pair, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			t.Fatal(err)
		}
		// GetClientCertificate rather than Certificates: crypto/tls would
		// otherwise withhold a certificate the server's CA list does not
		// name, and the foreign-CA case would test nothing.
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &pair, nil }
	}
	return cfg
}

func serialOf(t *testing.T, certPEM []byte) *big.Int {
	t.Helper()
	b, _ := pem.Decode(certPEM)
	if b == nil {
		t.Fatal("no PEM block")
	}
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c.SerialNumber
}

// testToken is the shared secret of muxes started without an identity.
var testToken = []byte("test cluster token")

// testAuth is mutual TLS with id, or the insecure plaintext mode with
// testToken when id is nil.
func testAuth(id *Identity) Auth {
	if id != nil {
		return Auth{Identity: id}
	}
	return Auth{Token: testToken}
}

// startMux listens on loopback and serves a mux; the test's cleanup closes
// it and checks that Serve returned nil.
func startMux(t *testing.T, id *Identity, log *zap.Logger, tune func(*Mux)) *Mux {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	m, err := NewMux(ln, testAuth(id), nil, log)
	if err != nil {
		t.Fatal(err)
	}
	if tune != nil {
		tune(m)
	}
	served := make(chan error, 1)
	go func() { served <- m.Serve() }()
	t.Cleanup(func() {
		if err := m.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
		select {
		case err := <-served:
			if err != nil {
				t.Errorf("serve: %v", err)
			}
		case <-time.After(guard):
			t.Error("Serve did not return after Close")
		}
	})
	return m
}

// acceptAll feeds every accepted connection of l into the returned channel
// until l is closed.
func acceptAll(l net.Listener) <-chan net.Conn {
	ch := make(chan net.Conn, 16)
	go func() {
		defer close(ch)
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			ch <- c
		}
	}()
	return ch
}

// expectClosedByPeer reads from c until the peer closes or fails it; a
// timeout or data means the server did not refuse the connection.
func expectClosedByPeer(t *testing.T, c net.Conn) error {
	t.Helper()
	if err := c.SetReadDeadline(time.Now().Add(guard)); err != nil {
		t.Fatal(err)
	}
	var buf [64]byte
	n, err := c.Read(buf[:])
	if err == nil {
		t.Fatalf("read %q from a connection the server should refuse", buf[:n])
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("server kept the connection open for %s", guard)
	}
	return err
}

// logEntry is one captured log line.
type logEntry struct {
	level  zapcore.Level
	msg    string
	fields map[string]any
}

// chanCore is a zap core that sends every entry, with its fields, to a
// channel so tests can wait for a specific log line.
type chanCore struct {
	ch     chan logEntry
	fields []zapcore.Field
}

func newChanLogger() (*zap.Logger, <-chan logEntry) {
	ch := make(chan logEntry, 256)
	return zap.New(&chanCore{ch: ch}), ch
}

func (c *chanCore) Enabled(zapcore.Level) bool { return true }

func (c *chanCore) With(f []zapcore.Field) zapcore.Core {
	return &chanCore{ch: c.ch, fields: append(slices.Clone(c.fields), f...)}
}

func (c *chanCore) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	return ce.AddCore(e, c)
}

func (c *chanCore) Write(e zapcore.Entry, f []zapcore.Field) error {
	enc := zapcore.NewMapObjectEncoder()
	for _, fl := range append(slices.Clone(c.fields), f...) {
		fl.AddTo(enc)
	}
	select {
	case c.ch <- logEntry{level: e.Level, msg: e.Message, fields: enc.Fields}:
	default:
	}
	return nil
}

func (c *chanCore) Sync() error { return nil }

// waitRejected waits for the next "connection rejected" line and checks
// its reason and remote address.
func waitRejected(t *testing.T, logs <-chan logEntry, reason string, remote net.Addr) logEntry {
	t.Helper()
	timeout := time.After(guard)
	for {
		select {
		case e := <-logs:
			if e.msg != "connection rejected" {
				continue
			}
			if e.fields["reason"] != reason {
				t.Fatalf("rejected with reason %v (%v), want %s", e.fields["reason"], e.fields, reason)
			}
			if remote != nil && e.fields["remote_addr"] != remote.String() {
				t.Fatalf("remote_addr %v, want %s", e.fields["remote_addr"], remote)
			}
			return e
		case <-timeout:
			t.Fatalf("no rejection with reason %s logged within %s", reason, guard)
			return logEntry{}
		}
	}
}
