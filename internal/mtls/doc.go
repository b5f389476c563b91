// Package mtls owns how immutd agents talk to each other: the mutual TLS
// identity every agent presents and requires (a certificate signed by the
// cluster CA that carries the cluster's ServerName DNS SAN), and the
// one-port multiplexer that carries both raft (hashicorp/raft's
// NetworkTransport protocol) and agent-to-agent RPC (HTTP/1.1).
//
// On every connection the dialing side first completes the TLS handshake
// (unless the multiplexer runs in plaintext mode for single-node or
// development use) and then writes one byte naming the protocol that
// follows: 'R' for raft, 'H' for RPC. The accepting side enforces a
// deadline on both steps, so a peer that connects and stays silent costs
// one goroutine for at most that long and never delays other peers.
//
// Certificates are reloadable: Identity.Reload swaps them for new
// handshakes without touching established connections.
package mtls
