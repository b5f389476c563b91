// Package mtls owns how immutd agents talk to each other: the mutual TLS
// identity every agent presents and requires (a certificate signed by the
// cluster CA that carries the cluster's ServerName DNS SAN), and the
// one-port multiplexer that carries both raft (hashicorp/raft's
// NetworkTransport protocol) and agent-to-agent RPC (HTTP/1.1).
//
// Every connection is authenticated before a single byte of raft or RPC
// is read; there is no mode without a credential. The dialing side first
// completes the mutual TLS handshake and then writes one byte naming the
// protocol that follows: 'R' for raft, 'H' for RPC. In the insecure
// plaintext mode (agents on one host, loopback only) there is no
// handshake, and the protocol byte is followed by a digest of a shared
// token instead. The accepting side enforces a deadline on all of it, so
// a peer that connects and stays silent costs one goroutine for at most
// that long and never delays other peers.
//
// Certificates are reloadable: Identity.Reload swaps them for new
// handshakes without touching established connections.
package mtls
