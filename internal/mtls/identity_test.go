package mtls

import (
	"crypto/tls"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestLoad(t *testing.T) {
	ca := newTestCA(t, "cluster CA")
	other := newTestCA(t, "other CA")
	goodCert, goodKey := ca.issue(t, "node-1", DefaultServerName)
	_, otherKey := ca.issue(t, "node-2", DefaultServerName)
	foreignCert, foreignKey := other.issue(t, "node-x", DefaultServerName)
	noSANCert, noSANKey := ca.issue(t, "node-3", "node-3.immutd")

	cases := []struct {
		name    string
		setup   func(dir string) Config
		wantErr []string // substrings; none means success
	}{
		{
			name:  "valid",
			setup: func(dir string) Config { return writeIdentity(t, dir, "n", ca, goodCert, goodKey) },
		},
		{
			name: "custom server name",
			setup: func(dir string) Config {
				c, k := ca.issue(t, "n", "server.eu.immutd")
				cfg := writeIdentity(t, dir, "n", ca, c, k)
				cfg.ServerName = "server.eu.immutd"
				return cfg
			},
		},
		{
			name: "missing ca file",
			setup: func(dir string) Config {
				cfg := writeIdentity(t, dir, "n", ca, goodCert, goodKey)
				cfg.CAFile = filepath.Join(dir, "nope.pem")
				return cfg
			},
			wantErr: []string{"ca file", "nope.pem"},
		},
		{
			name: "key does not match cert",
			setup: func(dir string) Config {
				return writeIdentity(t, dir, "n", ca, goodCert, otherKey)
			},
			wantErr: []string{"n-key.pem does not fit cert file", "n.pem"},
		},
		{
			name: "key file is not a key",
			setup: func(dir string) Config {
				return writeIdentity(t, dir, "n", ca, goodCert, []byte("garbage"))
			},
			wantErr: []string{"key file", "n-key.pem", "no PEM private key"},
		},
		{
			name: "cert file is not a cert",
			setup: func(dir string) Config {
				return writeIdentity(t, dir, "n", ca, []byte("garbage"), goodKey)
			},
			wantErr: []string{"cert file", "n.pem", "no PEM CERTIFICATE block"},
		},
		{
			name: "cert from another CA",
			setup: func(dir string) Config {
				return writeIdentity(t, dir, "n", ca, foreignCert, foreignKey)
			},
			wantErr: []string{"cert file", "n.pem", "does not verify against ca file", "ca.pem", "unknown authority"},
		},
		{
			name: "cert without the ServerName SAN",
			setup: func(dir string) Config {
				return writeIdentity(t, dir, "n", ca, noSANCert, noSANKey)
			},
			wantErr: []string{"cert file", "n.pem", `lacks DNS SAN "server.immutd"`},
		},
		{
			name: "ca file holds a leaf",
			setup: func(dir string) Config {
				cfg := writeIdentity(t, dir, "n", ca, goodCert, goodKey)
				if err := os.WriteFile(cfg.CAFile, goodCert, 0o644); err != nil {
					t.Fatal(err)
				}
				return cfg
			},
			wantErr: []string{"ca file", "ca.pem", "is not a CA"},
		},
		{
			name:    "unset files",
			setup:   func(string) Config { return Config{} },
			wantErr: []string{"ca file is not set"},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := tc.setup(t.TempDir())
			id, err := Load(cfg)
			if len(tc.wantErr) == 0 {
				if err != nil {
					t.Fatalf("Load: %v", err)
				}
				if id.ServerName() == "" || id.Certificate() == nil {
					t.Fatal("loaded identity lacks server name or certificate")
				}
				return
			}
			if err == nil {
				t.Fatal("Load succeeded, want an error")
			}
			for _, s := range tc.wantErr {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not contain %q", err, s)
				}
			}
		})
	}
}

func TestTLSConfigs(t *testing.T) {
	ca := newTestCA(t, "cluster CA")
	id := newIdentity(t, ca, "node-1")
	s := id.ServerTLS()
	if s.ClientAuth != tls.RequireAndVerifyClientCert || s.ClientCAs == nil || s.MinVersion != tls.VersionTLS13 {
		t.Errorf("server config: ClientAuth %v ClientCAs %v MinVersion %x", s.ClientAuth, s.ClientCAs, s.MinVersion)
	}
	per, err := s.GetConfigForClient(&tls.ClientHelloInfo{})
	if err != nil || per.ClientAuth != tls.RequireAndVerifyClientCert || per.VerifyConnection == nil {
		t.Errorf("per-connection server config %+v, %v", per, err)
	}
	c := id.ClientTLS()
	if c.ServerName != DefaultServerName || c.RootCAs == nil || c.GetClientCertificate == nil || c.MinVersion != tls.VersionTLS13 {
		t.Errorf("client config: ServerName %q RootCAs %v", c.ServerName, c.RootCAs)
	}
	got, err := c.GetClientCertificate(&tls.CertificateRequestInfo{})
	if err != nil || got.Leaf == nil || got.Leaf.Subject.CommonName != "node-1" {
		t.Errorf("client certificate %v, %v", got, err)
	}
}
