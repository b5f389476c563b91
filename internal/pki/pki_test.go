package pki

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func parseCert(t *testing.T, certPEM []byte) *x509.Certificate {
	t.Helper()
	b, rest := pem.Decode(certPEM)
	if b == nil || b.Type != "CERTIFICATE" {
		t.Fatalf("no CERTIFICATE block in %q", certPEM)
	}
	if len(bytes.TrimSpace(rest)) != 0 {
		t.Fatalf("trailing data after certificate: %q", rest)
	}
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestNewCA(t *testing.T) {
	before := time.Now()
	certPEM, keyPEM, err := NewCA("immutd test CA", 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	ca := parseCert(t, certPEM)
	if !ca.IsCA || !ca.BasicConstraintsValid {
		t.Errorf("IsCA=%v BasicConstraintsValid=%v, want both true", ca.IsCA, ca.BasicConstraintsValid)
	}
	if ca.KeyUsage&x509.KeyUsageCertSign == 0 || ca.KeyUsage&x509.KeyUsageCRLSign == 0 {
		t.Errorf("KeyUsage %b lacks cert sign or CRL sign", ca.KeyUsage)
	}
	if len(ca.ExtKeyUsage) != 0 {
		t.Errorf("CA has ExtKeyUsage %v, want none", ca.ExtKeyUsage)
	}
	if ca.Subject.CommonName != "immutd test CA" {
		t.Errorf("CN %q", ca.Subject.CommonName)
	}
	if err := ca.CheckSignatureFrom(ca); err != nil {
		t.Errorf("CA is not self-signed: %v", err)
	}
	pub, ok := ca.PublicKey.(*ecdsa.PublicKey)
	if !ok || pub.Curve != elliptic.P256() {
		t.Errorf("public key %T, want ECDSA P-256", ca.PublicKey)
	}
	if d := before.Sub(ca.NotBefore); d < 50*time.Second || d > 2*time.Minute {
		t.Errorf("NotBefore %v, want about a minute before %v", ca.NotBefore, before)
	}
	if d := ca.NotAfter.Sub(before); d < 23*time.Hour || d > 25*time.Hour {
		t.Errorf("NotAfter %v is %v after issue, want about 24h", ca.NotAfter, d)
	}
	if _, err := tls.X509KeyPair(certPEM, keyPEM); err != nil {
		t.Errorf("CA key does not match CA cert: %v", err)
	}
}

func TestNewCertVerifiesForServerAndClient(t *testing.T) {
	caPEM, caKey, err := NewCA("immutd test CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	dns := []string{"server.immutd", "node-1.example"}
	ips := []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("::1")}
	certPEM, keyPEM, err := NewCert(caPEM, caKey, "node-1", dns, ips, 30*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tls.X509KeyPair(certPEM, keyPEM); err != nil {
		t.Fatalf("leaf key does not match leaf cert: %v", err)
	}
	leaf := parseCert(t, certPEM)
	roots := x509.NewCertPool()
	roots.AddCert(parseCert(t, caPEM))

	for _, usage := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{usage}}); err != nil {
			t.Errorf("verify for usage %v: %v", usage, err)
		}
	}
	for _, name := range append(dns, "127.0.0.1", "::1") {
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, DNSName: name}); err != nil {
			t.Errorf("verify for name %s: %v", name, err)
		}
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, DNSName: "other.immutd"}); err == nil {
		t.Error("verify for a name not in the SANs succeeded")
	}
	if leaf.IsCA {
		t.Error("leaf is a CA")
	}
	if leaf.KeyUsage != x509.KeyUsageDigitalSignature {
		t.Errorf("leaf KeyUsage %b, want digital signature only", leaf.KeyUsage)
	}
	if got := strings.Join(leaf.DNSNames, ","); got != "server.immutd,node-1.example" {
		t.Errorf("DNSNames %s", got)
	}
	if len(leaf.IPAddresses) != 2 || !leaf.IPAddresses[0].Equal(ips[0]) || !leaf.IPAddresses[1].Equal(ips[1]) {
		t.Errorf("IPAddresses %v, want %v", leaf.IPAddresses, ips)
	}
	if d := time.Since(leaf.NotBefore); d < 50*time.Second || d > 2*time.Minute {
		t.Errorf("NotBefore %v, want about a minute in the past", leaf.NotBefore)
	}

	// A CA from elsewhere must not verify it.
	otherPEM, _, err := NewCA("other CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	otherRoots := x509.NewCertPool()
	otherRoots.AddCert(parseCert(t, otherPEM))
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: otherRoots}); err == nil {
		t.Error("leaf verified against an unrelated CA")
	}
}

func TestNewCertSerialsAreRandomAndValidityCapped(t *testing.T) {
	caPEM, caKey, err := NewCA("ca", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	ca := parseCert(t, caPEM)
	seen := map[string]bool{ca.SerialNumber.String(): true}
	for i := 0; i < 5; i++ {
		certPEM, _, err := NewCert(caPEM, caKey, "n", []string{"server.immutd"}, nil, 10*time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		c := parseCert(t, certPEM)
		if seen[c.SerialNumber.String()] {
			t.Fatalf("serial %s repeated", c.SerialNumber)
		}
		seen[c.SerialNumber.String()] = true
		if c.SerialNumber.Sign() <= 0 {
			t.Fatalf("serial %s not positive", c.SerialNumber)
		}
		if !c.NotAfter.Equal(ca.NotAfter) {
			t.Fatalf("NotAfter %v, want capped at the CA's %v", c.NotAfter, ca.NotAfter)
		}
	}
}

func TestNewCertErrors(t *testing.T) {
	caPEM, caKey, err := NewCA("ca", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	_, otherKey, err := NewCA("other", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	leafPEM, leafKey, err := NewCert(caPEM, caKey, "leaf", nil, nil, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name           string
		caCert, caKey  []byte
		cn             string
		validity       time.Duration
		wantErrContain string
	}{
		{"garbage ca cert", []byte("nope"), caKey, "x", time.Hour, "no PEM CERTIFICATE block"},
		{"garbage ca key", caPEM, []byte("nope"), "x", time.Hour, "ca key: no PEM block"},
		{"mismatched key", caPEM, otherKey, "x", time.Hour, "ca key does not match"},
		{"leaf as ca", leafPEM, leafKey, "x", time.Hour, "not a CA"},
		{"empty cn", caPEM, caKey, "", time.Hour, "common name is empty"},
		{"zero validity", caPEM, caKey, "x", 0, "not positive"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := NewCert(tc.caCert, tc.caKey, tc.cn, nil, nil, tc.validity)
			if err == nil || !strings.Contains(err.Error(), tc.wantErrContain) {
				t.Fatalf("err = %v, want it to contain %q", err, tc.wantErrContain)
			}
		})
	}
}

func TestWriteFiles(t *testing.T) {
	dir := t.TempDir()
	caPEM, caKey, err := NewCA("ca", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := WriteFiles(dir, "ca", caPEM, caKey); err != nil {
		t.Fatal(err)
	}
	check := func(path string, want []byte, mode os.FileMode) {
		t.Helper()
		got, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s content differs", path)
		}
		st, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != mode {
			t.Errorf("%s mode %v, want %v", path, st.Mode().Perm(), mode)
		}
	}
	check(filepath.Join(dir, "ca.pem"), caPEM, 0o644)
	check(filepath.Join(dir, "ca-key.pem"), caKey, 0o600)

	// Overwrite in place; no temporary files remain.
	certPEM, keyPEM, err := NewCert(caPEM, caKey, "n1", []string{"server.immutd"}, nil, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := WriteFiles(dir, "ca", certPEM, keyPEM); err != nil {
		t.Fatal(err)
	}
	check(filepath.Join(dir, "ca.pem"), certPEM, 0o644)
	check(filepath.Join(dir, "ca-key.pem"), keyPEM, 0o600)
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 2 {
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		t.Errorf("dir holds %v, want only ca.pem and ca-key.pem", names)
	}

	if err := WriteFiles(filepath.Join(dir, "missing"), "x", certPEM, keyPEM); err == nil {
		t.Error("writing into a missing directory succeeded")
	}
	for _, bad := range []string{"", "a/b", "..", "."} {
		if err := WriteFiles(dir, bad, certPEM, keyPEM); err == nil {
			t.Errorf("name %q accepted", bad)
		}
	}
}
