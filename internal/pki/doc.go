// Package pki owns the certificates an immutd cluster uses for mutual TLS
// between agents: it creates a self-signed ECDSA P-256 cluster CA, issues
// agent certificates signed by it that serve as both TLS server and TLS
// client identity, and writes them to disk atomically with the right
// permissions. It is used by the `immutd tls init` command and by tests;
// it never loads certificates for serving (package mtls does that).
package pki
