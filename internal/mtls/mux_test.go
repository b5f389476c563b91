package mtls

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// rpcHandler answers with the peer's certificate CN, or "plaintext".
func rpcHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		peer := "plaintext"
		if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
			peer = r.TLS.PeerCertificates[0].Subject.CommonName
		}
		fmt.Fprintf(w, "%s %s", r.URL.Path, peer)
	})
}

func TestRPCOverMux(t *testing.T) {
	ca := newTestCA(t, "cluster CA")
	for _, mode := range []string{"tls", "plaintext"} {
		t.Run(mode, func(t *testing.T) {
			var serverID, clientID *Identity
			wantPeer := "plaintext"
			if mode == "tls" {
				serverID, clientID = newIdentity(t, ca, "node-1"), newIdentity(t, ca, "node-2")
				wantPeer = "node-2"
			}
			server := startMux(t, serverID, nil, nil)
			client := startMux(t, clientID, nil, nil)

			srv := &http.Server{Handler: rpcHandler(), ReadHeaderTimeout: guard}
			served := make(chan error, 1)
			go func() { served <- srv.Serve(server.RPCListener()) }()
			t.Cleanup(func() {
				ctx, cancel := context.WithTimeout(context.Background(), guard)
				defer cancel()
				if err := srv.Shutdown(ctx); err != nil {
					t.Errorf("shutdown: %v", err)
				}
				if err := <-served; !errors.Is(err, http.ErrServerClosed) {
					t.Errorf("serve: %v", err)
				}
			})

			hc := &http.Client{Transport: client.RPCTransport(), Timeout: guard}
			url := "http://" + server.RaftLayer().Addr().String() + "/cluster/v1/ping"
			var reused []bool
			for i := 0; i < 2; i++ {
				trace := &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) { reused = append(reused, info.Reused) }}
				req, err := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace), http.MethodGet, url, nil)
				if err != nil {
					t.Fatal(err)
				}
				resp, err := hc.Do(req)
				if err != nil {
					t.Fatalf("request %d: %v", i, err)
				}
				body, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				if err != nil {
					t.Fatal(err)
				}
				if want := "/cluster/v1/ping " + wantPeer; resp.StatusCode != http.StatusOK || string(body) != want {
					t.Fatalf("got %d %q, want 200 %q", resp.StatusCode, body, want)
				}
			}
			if len(reused) != 2 || reused[0] || !reused[1] {
				t.Errorf("connection reuse %v, want [false true] (keep-alive)", reused)
			}
		})
	}
}

// TestRefusals checks that each kind of bad client is closed by the mux,
// logged with its reason, and never reaches Accept: the first connection
// Accept returns afterwards is the good client that dialed later.
func TestRefusals(t *testing.T) {
	ca := newTestCA(t, "cluster CA")
	other := newTestCA(t, "other CA")
	goodCert, goodKey := ca.issue(t, "node-2", DefaultServerName)
	foreignCert, foreignKey := other.issue(t, "intruder", DefaultServerName)
	noSANCert, noSANKey := ca.issue(t, "node-9", "node-9.immutd")

	tlsClient := func(cfg *tls.Config, proto byte) func(t *testing.T, addr string) net.Conn {
		return func(t *testing.T, addr string) net.Conn {
			raw, err := net.DialTimeout("tcp", addr, guard)
			if err != nil {
				t.Fatal(err)
			}
			if err := raw.SetDeadline(time.Now().Add(guard)); err != nil {
				t.Fatal(err)
			}
			c := tls.Client(raw, cfg)
			// With TLS 1.3 the client may finish its side of the
			// handshake before the server has judged its certificate;
			// the refusal then shows on the next read.
			if err := c.Handshake(); err == nil {
				if _, err := c.Write([]byte{proto}); err != nil {
					t.Logf("write protocol byte: %v", err)
				}
			}
			return c
		}
	}
	cases := []struct {
		name   string
		reason string
		dial   func(t *testing.T, addr string) net.Conn
	}{
		{"no client certificate", "no_client_certificate", tlsClient(tlsClientConfig(t, ca, nil, nil), ProtoRaft)},
		{"certificate from another CA", "untrusted_certificate", tlsClient(tlsClientConfig(t, ca, foreignCert, foreignKey), ProtoRaft)},
		{"certificate without the ServerName SAN", "wrong_san", tlsClient(tlsClientConfig(t, ca, noSANCert, noSANKey), ProtoRPC)},
		{"client does not trust the server", "peer_refused_tls", tlsClient(tlsClientConfig(t, other, goodCert, goodKey), ProtoRaft)},
		{"unknown protocol byte", "unknown_protocol", tlsClient(tlsClientConfig(t, ca, goodCert, goodKey), 'X')},
		{"plaintext client", "not_tls", func(t *testing.T, addr string) net.Conn {
			c, err := net.DialTimeout("tcp", addr, guard)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := io.WriteString(c, "RGET / HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
				t.Fatal(err)
			}
			return c
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			log, logs := newChanLogger()
			m := startMux(t, newIdentity(t, ca, "node-1"), log, nil)
			raftConns, rpcConns := acceptAll(m.RaftLayer()), acceptAll(m.RPCListener())

			bad := tc.dial(t, m.ln.Addr().String())
			defer bad.Close()
			err := expectClosedByPeer(t, bad)
			t.Logf("bad client saw: %v", err)
			waitRejected(t, logs, tc.reason, bad.LocalAddr())

			// A good client still gets through, and it is the first
			// connection raft's Accept sees.
			good := tlsClient(tlsClientConfig(t, ca, goodCert, goodKey), ProtoRaft)(t, m.ln.Addr().String())
			defer good.Close()
			select {
			case c := <-raftConns:
				defer c.Close()
				if c.RemoteAddr().String() != good.LocalAddr().String() {
					t.Fatalf("raft Accept returned %s, want the good client %s", c.RemoteAddr(), good.LocalAddr())
				}
			case <-time.After(guard):
				t.Fatal("good client not accepted")
			}
			select {
			case c := <-rpcConns:
				c.Close()
				t.Fatalf("RPC Accept returned %s", c.RemoteAddr())
			default:
			}
		})
	}
}

// TestDialRefusesBadPeers checks the dialing side: a peer whose certificate
// is from another CA or lacks the ServerName SAN is refused.
func TestDialRefusesBadPeers(t *testing.T) {
	ca := newTestCA(t, "cluster CA")
	other := newTestCA(t, "other CA")
	m := startMux(t, newIdentity(t, ca, "node-1"), nil, nil)
	foreignCert, foreignKey := other.issue(t, "intruder", DefaultServerName)
	noSANCert, noSANKey := ca.issue(t, "node-9", "node-9.immutd")
	for _, tc := range []struct {
		name      string
		cert, key []byte
		want      string
	}{
		{"another CA", foreignCert, foreignKey, "unknown authority"},
		{"no ServerName SAN", noSANCert, noSANKey, "server.immutd"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pair, err := tls.X509KeyPair(tc.cert, tc.key)
			if err != nil {
				t.Fatal(err)
			}
			ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{pair}})
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			go func() {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(guard))
				_ = c.(*tls.Conn).Handshake()
			}()
			c, err := m.RaftLayer().Dial(raft.ServerAddress(ln.Addr().String()), guard)
			if err == nil {
				c.Close()
				t.Fatal("dial to a bad peer succeeded")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not mention %q", err, tc.want)
			}
		})
	}
}

func TestReload(t *testing.T) {
	ca := newTestCA(t, "cluster CA")
	dir := t.TempDir()
	certA, keyA := ca.issue(t, "node-1", DefaultServerName)
	cfg := writeIdentity(t, dir, "node-1", ca, certA, keyA)
	id, err := Load(cfg)
	if err != nil {
		t.Fatal(err)
	}
	server := startMux(t, id, nil, nil)
	peer := startMux(t, newIdentity(t, ca, "node-2"), nil, nil)
	peerRaft := acceptAll(peer.RaftLayer())

	// presented returns the serial the mux shows as server (a raw TLS
	// client connecting to it) and as client (its raft layer dialing the
	// peer mux).
	presented := func(t *testing.T) (asServer, asClient string) {
		t.Helper()
		goodCert, goodKey := ca.issue(t, "probe", DefaultServerName)
		raw, err := tls.DialWithDialer(&net.Dialer{Timeout: guard}, "tcp", server.ln.Addr().String(), tlsClientConfig(t, ca, goodCert, goodKey))
		if err != nil {
			t.Fatal(err)
		}
		asServer = raw.ConnectionState().PeerCertificates[0].SerialNumber.String()
		raw.Close()

		c, err := server.RaftLayer().Dial(raft.ServerAddress(peer.RaftLayer().Addr().String()), guard)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		select {
		case ac := <-peerRaft:
			defer ac.Close()
			asClient = ac.(*tls.Conn).ConnectionState().PeerCertificates[0].SerialNumber.String()
		case <-time.After(guard):
			t.Fatal("peer did not accept")
		}
		return asServer, asClient
	}

	a := serialOf(t, certA).String()
	if s, c := presented(t); s != a || c != a {
		t.Fatalf("before reload: serials %s/%s, want %s", s, c, a)
	}
	// A connection made before the reload keeps working after it.
	before, err := server.RaftLayer().Dial(raft.ServerAddress(peer.RaftLayer().Addr().String()), guard)
	if err != nil {
		t.Fatal(err)
	}
	defer before.Close()
	var beforeAccepted net.Conn
	select {
	case beforeAccepted = <-peerRaft:
		defer beforeAccepted.Close()
	case <-time.After(guard):
		t.Fatal("peer did not accept")
	}

	certB, keyB := ca.issue(t, "node-1", DefaultServerName)
	writeIdentity(t, dir, "node-1", ca, certB, keyB)
	if err := id.Reload(); err != nil {
		t.Fatalf("reload: %v", err)
	}
	b := serialOf(t, certB).String()
	if id.Certificate().SerialNumber.String() != b {
		t.Fatalf("Certificate() serial %s, want %s", id.Certificate().SerialNumber, b)
	}
	if s, c := presented(t); s != b || c != b {
		t.Fatalf("after reload: serials %s/%s, want %s", s, c, b)
	}
	exchange(t, before, beforeAccepted)

	// Broken files: Reload fails and the identity keeps serving B.
	if err := os.WriteFile(cfg.CertFile, []byte("-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	err = id.Reload()
	if err == nil || !strings.Contains(err.Error(), cfg.CertFile) {
		t.Fatalf("reload of a broken cert file: %v, want an error naming %s", err, cfg.CertFile)
	}
	certC, _ := ca.issue(t, "node-1", DefaultServerName)
	if err := os.WriteFile(cfg.CertFile, certC, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := id.Reload(); err == nil || !strings.Contains(err.Error(), "does not fit") {
		t.Fatalf("reload with a key that does not fit: %v", err)
	}
	if s, c := presented(t); s != b || c != b {
		t.Fatalf("after failed reloads: serials %s/%s, want %s", s, c, b)
	}
}

// exchange checks that a and b, two ends of one connection, carry data
// both ways.
func exchange(t *testing.T, a, b net.Conn) {
	t.Helper()
	for _, p := range [][2]net.Conn{{a, b}, {b, a}} {
		_ = p[1].SetReadDeadline(time.Now().Add(guard))
		if _, err := io.WriteString(p[0], "ping\n"); err != nil {
			t.Fatal(err)
		}
		line, err := bufio.NewReader(p[1]).ReadString('\n')
		if err != nil || line != "ping\n" {
			t.Fatalf("read %q, %v", line, err)
		}
		_ = p[1].SetReadDeadline(time.Time{})
	}
}

// TestHandoffClearsDeadline: a handed-off connection outlives the
// handshake deadline. The sleep is the subject of the test: it lets the
// deadline pass.
func TestHandoffClearsDeadline(t *testing.T) {
	ca := newTestCA(t, "cluster CA")
	for _, mode := range []string{"tls", "plaintext"} {
		t.Run(mode, func(t *testing.T) {
			var id1, id2 *Identity
			if mode == "tls" {
				id1, id2 = newIdentity(t, ca, "node-1"), newIdentity(t, ca, "node-2")
			}
			short := func(m *Mux) { m.handshakeTimeout = 100 * time.Millisecond }
			server := startMux(t, id1, nil, short)
			client := startMux(t, id2, nil, short)
			rpc := acceptAll(server.RPCListener())
			c, err := client.dial(context.Background(), "tcp", server.ln.Addr().String(), ProtoRPC)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			var ac net.Conn
			select {
			case ac = <-rpc:
				defer ac.Close()
			case <-time.After(guard):
				t.Fatal("not accepted")
			}
			time.Sleep(300 * time.Millisecond)
			exchange(t, c, ac)
		})
	}
}

// TestSlowClientDoesNotBlockOthers: a client that connects and sends
// nothing must not delay the next one. The handshake timeout is set far
// above the guard, so a mux that handled connections serially would fail.
func TestSlowClientDoesNotBlockOthers(t *testing.T) {
	ca := newTestCA(t, "cluster CA")
	for _, mode := range []string{"tls", "plaintext"} {
		t.Run(mode, func(t *testing.T) {
			var id1, id2 *Identity
			if mode == "tls" {
				id1, id2 = newIdentity(t, ca, "node-1"), newIdentity(t, ca, "node-2")
			}
			server := startMux(t, id1, nil, func(m *Mux) { m.handshakeTimeout = time.Hour })
			client := startMux(t, id2, nil, nil)
			raftConns := acceptAll(server.RaftLayer())

			var silent []net.Conn
			for i := 0; i < 3; i++ {
				c, err := net.DialTimeout("tcp", server.ln.Addr().String(), guard)
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				silent = append(silent, c)
			}
			if mode == "tls" {
				// One more that completes TLS but never sends the
				// protocol byte.
				c, err := tls.DialWithDialer(&net.Dialer{Timeout: guard}, "tcp", server.ln.Addr().String(), id2.ClientTLS())
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
			}
			c, err := client.RaftLayer().Dial(raft.ServerAddress(server.ln.Addr().String()), guard)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			select {
			case ac := <-raftConns:
				defer ac.Close()
				exchange(t, c, ac)
			case <-time.After(guard):
				t.Fatal("a silent client blocked the next one")
			}
			// Close aborts the pending handshakes at once.
			if err := server.Close(); err != nil {
				t.Fatal(err)
			}
			for _, s := range silent {
				expectClosedByPeer(t, s)
			}
		})
	}
}

// TestSilentClientTimesOut: the handshake deadline closes a silent client.
func TestSilentClientTimesOut(t *testing.T) {
	ca := newTestCA(t, "cluster CA")
	for _, mode := range []string{"tls", "plaintext"} {
		t.Run(mode, func(t *testing.T) {
			var id *Identity
			if mode == "tls" {
				id = newIdentity(t, ca, "node-1")
			}
			log, logs := newChanLogger()
			server := startMux(t, id, log, func(m *Mux) { m.handshakeTimeout = 100 * time.Millisecond })
			c, err := net.DialTimeout("tcp", server.ln.Addr().String(), guard)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			expectClosedByPeer(t, c)
			e := waitRejected(t, logs, "timeout", c.LocalAddr())
			if e.level.String() != "debug" {
				t.Errorf("timeout logged at %s, want debug", e.level)
			}
		})
	}
}

func TestTooManyPendingHandshakes(t *testing.T) {
	log, logs := newChanLogger()
	server := startMux(t, nil, log, func(m *Mux) { m.maxPending = 1; m.handshakeTimeout = time.Hour })
	first, err := net.DialTimeout("tcp", server.ln.Addr().String(), guard)
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	second, err := net.DialTimeout("tcp", server.ln.Addr().String(), guard)
	if err != nil {
		t.Fatal(err)
	}
	defer second.Close()
	expectClosedByPeer(t, second)
	waitRejected(t, logs, "too_many_pending_handshakes", second.LocalAddr())
	// The first is still waiting for its protocol byte and gets through.
	raftConns := acceptAll(server.RaftLayer())
	if _, err := first.Write(append([]byte{ProtoRaft}, tokenDigest(testToken)...)); err != nil {
		t.Fatal(err)
	}
	select {
	case ac := <-raftConns:
		ac.Close()
	case <-time.After(guard):
		t.Fatal("first connection not accepted")
	}
}

// TestClose: Accept on both sub-listeners returns net.ErrClosed, and a
// connection that finished its handshake but was never accepted is closed
// rather than leaked.
func TestClose(t *testing.T) {
	ca := newTestCA(t, "cluster CA")
	id1, id2 := newIdentity(t, ca, "node-1"), newIdentity(t, ca, "node-2")
	server := startMux(t, id1, nil, nil)
	client := startMux(t, id2, nil, nil)

	// Nobody accepts raft yet: this connection waits in handoff.
	waiting, err := client.RaftLayer().Dial(raft.ServerAddress(server.ln.Addr().String()), guard)
	if err != nil {
		t.Fatal(err)
	}
	defer waiting.Close()
	waitHandedOff(t, server)

	errs := make(chan error, 2)
	go func() { _, err := server.RPCListener().Accept(); errs <- err }()
	if err := server.Close(); err != nil {
		t.Fatal(err)
	}
	go func() { _, err := server.RaftLayer().Accept(); errs <- err }()
	for i := 0; i < 2; i++ {
		select {
		case err := <-errs:
			if !errors.Is(err, net.ErrClosed) {
				t.Fatalf("Accept after Close: %v, want net.ErrClosed", err)
			}
		case <-time.After(guard):
			t.Fatal("Accept did not return after Close")
		}
	}
	expectClosedByPeer(t, waiting)
	if _, err := net.DialTimeout("tcp", server.ln.Addr().String(), guard); err == nil {
		t.Error("listener still accepts after Close")
	}
	if err := server.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

// TestSubListenerClose: closing the raft layer (as NetworkTransport.Close
// does) stops raft only; RPC keeps working, and raft connections are
// closed instead of waiting forever.
func TestSubListenerClose(t *testing.T) {
	server := startMux(t, nil, nil, nil)
	client := startMux(t, nil, nil, nil)
	if err := server.RaftLayer().Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := server.RaftLayer().Accept(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("raft Accept after its Close: %v", err)
	}
	c, err := client.RaftLayer().Dial(raft.ServerAddress(server.ln.Addr().String()), guard)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	expectClosedByPeer(t, c)

	rpc := acceptAll(server.RPCListener())
	r, err := client.dial(context.Background(), "tcp", server.ln.Addr().String(), ProtoRPC)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	select {
	case ac := <-rpc:
		defer ac.Close()
		exchange(t, r, ac)
	case <-time.After(guard):
		t.Fatal("RPC not accepted after the raft layer closed")
	}
}

func TestAddrs(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	adv := &net.TCPAddr{IP: net.ParseIP("10.1.2.3"), Port: 7000}
	m, err := NewMux(ln, testAuth(nil), adv, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if got := m.RaftLayer().Addr().String(); got != "10.1.2.3:7000" {
		t.Errorf("raft Addr %s, want the advertise address", got)
	}
	if got := m.RPCListener().Addr().String(); got != ln.Addr().String() {
		t.Errorf("RPC Addr %s, want %s", got, ln.Addr())
	}
	if m.RPCTransport() != m.RPCTransport() {
		t.Error("RPCTransport returns a new transport per call")
	}
}

// waitHandedOff waits until m has no connection left in the handshake,
// so that a connection just dialed is past it and waiting in handoff.
// Bounded polling: the handoff has no other observable state.
func waitHandedOff(t *testing.T, m *Mux) {
	t.Helper()
	for deadline := time.Now().Add(guard); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		m.mu.Lock()
		n := len(m.pending)
		m.mu.Unlock()
		if n == 0 {
			return
		}
	}
	t.Fatal("connection still in the handshake")
}

// TestTokenMode: in the insecure plaintext mode a connection gets through
// only with the token's digest, and only from loopback.
func TestTokenMode(t *testing.T) {
	if _, err := NewMux(nil, Auth{}, nil, nil); err == nil {
		t.Fatal("a mux without any credential was made")
	}
	log, logs := newChanLogger()
	server := startMux(t, nil, log, func(m *Mux) { m.handshakeTimeout = 300 * time.Millisecond })
	addr := server.ln.Addr().String()
	rpc := acceptAll(server.RPCListener())
	for _, c := range []struct {
		name   string
		hello  []byte
		reason string
	}{
		{"no token", []byte{ProtoRPC}, "timeout"},
		{"wrong token", append([]byte{ProtoRPC}, tokenDigest([]byte("guessed"))...), "wrong_token"},
		{"raw token instead of its digest", append([]byte{ProtoRPC}, []byte("test cluster token\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00")...), "wrong_token"},
	} {
		t.Run(c.name, func(t *testing.T) {
			conn, err := net.DialTimeout("tcp", addr, guard)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			if _, err := conn.Write(c.hello); err != nil {
				t.Fatal(err)
			}
			expectClosedByPeer(t, conn)
			waitRejected(t, logs, c.reason, conn.LocalAddr())
		})
	}
	select {
	case ac := <-rpc:
		t.Fatalf("a connection without the right token was accepted from %s", ac.RemoteAddr())
	default:
	}
	client := startMux(t, nil, nil, nil)
	conn, err := client.dial(context.Background(), "tcp", addr, ProtoRPC)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	select {
	case ac := <-rpc:
		defer ac.Close()
		exchange(t, conn, ac)
	case <-time.After(guard):
		t.Fatal("a connection with the token was not accepted")
	}
	// A remote address that is not loopback is refused before anything is read.
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if got := server.checkToken(a, &net.TCPAddr{IP: net.ParseIP("10.0.0.7"), Port: 4000}); got != "not_loopback" {
		t.Errorf("token check from 10.0.0.7: %q, want not_loopback", got)
	}
}
