package mtls

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/raft"
	"go.uber.org/zap"
)

// Protocol bytes, written by the dialing side right after the handshake.
const (
	ProtoRaft byte = 'R'
	ProtoRPC  byte = 'H'
)

const (
	// defaultHandshakeTimeout bounds the TLS handshake plus the protocol
	// byte on accepted connections, and the same steps on dialed ones
	// when the caller gives no earlier deadline.
	defaultHandshakeTimeout = 5 * time.Second
	// defaultMaxPending caps connections that are still in the handshake;
	// beyond it new connections are closed at once, so a flood of silent
	// clients cannot grow without bound.
	defaultMaxPending = 1024
)

// Auth is how the cluster port authenticates every connection, in both
// directions. Exactly one of its fields is set: there is no mode without
// a credential.
type Auth struct {
	// Identity is mutual TLS 1.3: the peer presents a certificate of the
	// cluster CA that carries the cluster's ServerName SAN.
	Identity *Identity
	// Token is the insecure plaintext mode: nothing is encrypted, and
	// every connection proves that it knows this shared secret by sending
	// a digest of it right after its protocol byte. Anyone who can read
	// the traffic learns the digest, so the mode accepts connections from
	// loopback addresses only.
	Token []byte
}

// tokenDigest is what a connection sends in the insecure plaintext mode.
func tokenDigest(token []byte) []byte {
	h := sha256.New()
	h.Write([]byte("immutd cluster token v1\x00"))
	h.Write(token)
	return h.Sum(nil)
}

// Mux accepts connections on one listener and routes each, once it is
// authenticated, by its protocol byte to the raft layer or the RPC
// listener.
type Mux struct {
	ln        net.Listener
	id        *Identity
	token     []byte // digest, in the insecure plaintext mode
	serverTLS *tls.Config
	advertise net.Addr
	log       *zap.Logger

	handshakeTimeout time.Duration
	maxPending       int

	raft *subListener
	rpc  *subListener
	rpcT *http.Transport

	mu      sync.Mutex
	closed  bool
	pending map[net.Conn]struct{}
	wg      sync.WaitGroup
	done    chan struct{}
}

// NewMux takes an open listener and how to authenticate its connections.
// advertise is the address raft peers dial, returned by the raft layer's
// Addr(); nil means the listener's address. log nil discards. Call Serve
// to start accepting.
func NewMux(ln net.Listener, auth Auth, advertise net.Addr, log *zap.Logger) (*Mux, error) {
	if (auth.Identity == nil) == (len(auth.Token) == 0) {
		return nil, errors.New("mtls: the cluster port needs exactly one way to authenticate peers: a TLS identity or a token")
	}
	if log == nil {
		log = zap.NewNop()
	}
	if advertise == nil {
		advertise = ln.Addr()
	}
	m := &Mux{
		ln:               ln,
		id:               auth.Identity,
		advertise:        advertise,
		log:              log,
		handshakeTimeout: defaultHandshakeTimeout,
		maxPending:       defaultMaxPending,
		pending:          make(map[net.Conn]struct{}),
		done:             make(chan struct{}),
	}
	if auth.Identity != nil {
		m.serverTLS = auth.Identity.ServerTLS()
	} else {
		m.token = tokenDigest(auth.Token)
	}
	m.raft = newSubListener(m, advertise)
	m.rpc = newSubListener(m, ln.Addr())
	m.rpcT = &http.Transport{
		Proxy: nil,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return m.dial(ctx, network, addr, ProtoRPC)
		},
		ForceAttemptHTTP2:     false,
		DisableKeepAlives:     false,
		MaxIdleConns:          64,
		MaxIdleConnsPerHost:   8,
		IdleConnTimeout:       90 * time.Second,
		ExpectContinueTimeout: time.Second,
	}
	return m, nil
}

// Serve accepts connections until Close, handling each in its own
// goroutine. It returns nil after Close, or the listener's error if the
// listener fails otherwise.
func (m *Mux) Serve() error {
	var backoff time.Duration
	for {
		c, err := m.ln.Accept()
		if err != nil {
			if m.isClosed() {
				return nil
			}
			if errors.Is(err, net.ErrClosed) {
				return fmt.Errorf("mtls: accept: %w", err)
			}
			// Resource exhaustion (EMFILE and the like): back off
			// instead of spinning, like net/http does.
			if backoff == 0 {
				backoff = 5 * time.Millisecond
			} else if backoff *= 2; backoff > time.Second {
				backoff = time.Second
			}
			m.log.Warn("accept failed, retrying", zap.Error(err), zap.Float64("backoff_seconds", backoff.Seconds()))
			t := time.NewTimer(backoff)
			select {
			case <-t.C:
			case <-m.done:
				t.Stop()
				return nil
			}
			continue
		}
		backoff = 0
		if !m.track(c) {
			continue
		}
		go m.handle(c)
	}
}

// track registers a new connection as pending, or closes it when the mux
// is closed or too many handshakes are in flight.
func (m *Mux) track(c net.Conn) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		c.Close()
		return false
	}
	if len(m.pending) >= m.maxPending {
		c.Close()
		m.log.Warn("connection rejected", zap.Stringer("remote_addr", c.RemoteAddr()), zap.String("reason", "too_many_pending_handshakes"), zap.Int("pending", len(m.pending)))
		return false
	}
	m.pending[c] = struct{}{}
	m.wg.Add(1)
	return true
}

func (m *Mux) untrack(c net.Conn) {
	m.mu.Lock()
	delete(m.pending, c)
	m.mu.Unlock()
}

func (m *Mux) isClosed() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.closed
}

// handle runs the handshake and reads the protocol byte under one
// deadline, then hands the connection off with the deadline cleared.
func (m *Mux) handle(raw net.Conn) {
	defer m.wg.Done()
	defer m.untrack(raw)

	remote := raw.RemoteAddr()
	_ = raw.SetDeadline(time.Now().Add(m.handshakeTimeout))
	conn := raw
	if m.serverTLS != nil {
		tc := tls.Server(raw, m.serverTLS)
		if err := tc.Handshake(); err != nil {
			raw.Close()
			m.reject(remote, classifyHandshake(err), err)
			return
		}
		conn = tc
	}
	var b [1]byte
	if _, err := io.ReadFull(conn, b[:]); err != nil {
		conn.Close()
		m.reject(remote, classifyRead(err), err)
		return
	}
	if m.token != nil {
		if err := m.checkToken(conn, remote); err != "" {
			conn.Close()
			m.reject(remote, err, nil)
			return
		}
	}
	var dst *subListener
	switch b[0] {
	case ProtoRaft:
		dst = m.raft
	case ProtoRPC:
		dst = m.rpc
	default:
		conn.Close()
		if !m.isClosed() {
			m.log.Warn("connection rejected", zap.Stringer("remote_addr", remote), zap.String("reason", "unknown_protocol"), zap.String("protocol_byte", fmt.Sprintf("%#02x", b[0])))
		}
		return
	}
	if err := conn.SetDeadline(time.Time{}); err != nil {
		conn.Close()
		m.reject(remote, "set_deadline_failed", err)
		return
	}
	m.untrack(raw)
	dst.handoff(conn)
}

// checkToken reads and checks the token digest of the insecure plaintext
// mode; it returns the reason for a refusal, or "".
func (m *Mux) checkToken(conn net.Conn, remote net.Addr) string {
	if ta, ok := remote.(*net.TCPAddr); !ok || !ta.IP.IsLoopback() {
		return "not_loopback"
	}
	got := make([]byte, len(m.token))
	if _, err := io.ReadFull(conn, got); err != nil {
		return classifyRead(err)
	}
	if subtle.ConstantTimeCompare(got, m.token) != 1 {
		return "wrong_token"
	}
	return ""
}

// reject logs a refused connection. Certificate and protocol problems are
// warnings; peers that go away or stay silent are routine (port scans,
// load balancer checks) and logged at debug.
func (m *Mux) reject(remote net.Addr, reason string, err error) {
	if m.isClosed() {
		return
	}
	lvl := zap.WarnLevel
	switch reason {
	case "closed_early", "timeout", "connection_error":
		lvl = zap.DebugLevel
	}
	if ce := m.log.Check(lvl, "connection rejected"); ce != nil {
		fields := []zap.Field{zap.Stringer("remote_addr", remote), zap.String("reason", reason)}
		if err != nil {
			fields = append(fields, zap.Error(err))
		}
		ce.Write(fields...)
	}
}

func classifyHandshake(err error) string {
	var (
		unknownCA x509.UnknownAuthorityError
		invalid   x509.CertificateInvalidError
		hostname  x509.HostnameError
		san       *errMissingSAN
		record    tls.RecordHeaderError
	)
	switch {
	case errors.As(err, &san), errors.As(err, &hostname):
		return "wrong_san"
	case errors.As(err, &unknownCA):
		return "untrusted_certificate"
	case errors.As(err, &invalid):
		return "invalid_certificate"
	case errors.As(err, &record):
		return "not_tls"
	case isRemoteAlert(err):
		// The peer aborted the handshake, typically because it does not
		// trust this agent's certificate.
		return "peer_refused_tls"
	case strings.Contains(err.Error(), "didn't provide a certificate"):
		// crypto/tls reports a missing client certificate with an
		// untyped error; this label only serves the log.
		return "no_client_certificate"
	}
	return classifyRead(err)
}

// isRemoteAlert reports a TLS alert received from the peer, which
// crypto/tls returns as a net.OpError with Op "remote error".
func isRemoteAlert(err error) bool {
	var oe *net.OpError
	return errors.As(err, &oe) && oe.Op == "remote error"
}

func classifyRead(err error) string {
	var ne net.Error
	switch {
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "closed_early"
	case errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	case errors.Is(err, net.ErrClosed):
		return "connection_error"
	}
	var oe *net.OpError
	if errors.As(err, &oe) {
		return "connection_error"
	}
	return "handshake_failed"
}

// dial connects to addr, runs the client handshake and writes the
// protocol byte. ctx bounds the whole; when it has no deadline, the
// handshake and protocol byte are bounded by the handshake timeout.
func (m *Mux) dial(ctx context.Context, network, addr string, proto byte) (net.Conn, error) {
	var d net.Dialer
	raw, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, fmt.Errorf("mtls: dial %s: %w", addr, err)
	}
	deadline := time.Now().Add(m.handshakeTimeout)
	if dl, ok := ctx.Deadline(); ok && dl.Before(deadline) {
		deadline = dl
	}
	// The deadline also covers the protocol byte; the context only the
	// handshake.
	_ = raw.SetDeadline(deadline)
	conn := raw
	if m.id != nil {
		tc := tls.Client(raw, m.id.ClientTLS())
		if err := tc.HandshakeContext(ctx); err != nil {
			raw.Close()
			return nil, fmt.Errorf("mtls: tls handshake with %s: %w", addr, err)
		}
		conn = tc
	}
	hello := []byte{proto}
	if m.token != nil {
		hello = append(hello, m.token...)
	}
	if _, err := conn.Write(hello); err != nil {
		conn.Close()
		return nil, fmt.Errorf("mtls: write protocol byte to %s: %w", addr, err)
	}
	if err := conn.SetDeadline(time.Time{}); err != nil {
		conn.Close()
		return nil, fmt.Errorf("mtls: clear deadline on %s: %w", addr, err)
	}
	return conn, nil
}

// RaftLayer returns the stream layer for raft.NetworkTransport. Closing
// it (as NetworkTransport.Close does) stops raft's Accept only; the mux
// and the RPC listener keep running.
func (m *Mux) RaftLayer() raft.StreamLayer { return raftLayer{m.raft} }

// RPCListener returns the listener for RPC connections, for
// http.Server.Serve. Closing it stops RPC's Accept only.
func (m *Mux) RPCListener() net.Listener { return m.rpc }

// RPCTransport returns the HTTP transport for RPC to other agents. Use
// plain http:// URLs with a peer's raft address as host; the transport's
// dialer authenticates (TLS, or the token) and writes the RPC protocol
// byte. Keep-alives are on. The same transport is returned on
// every call.
func (m *Mux) RPCTransport() *http.Transport { return m.rpcT }

// Close closes the listener, makes Accept on both sub-listeners return
// net.ErrClosed, aborts handshakes in progress, closes connections not yet
// accepted and idle RPC client connections, and waits for the connection
// goroutines to finish. Connections already accepted stay open.
func (m *Mux) Close() error {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil
	}
	m.closed = true
	close(m.done)
	for c := range m.pending {
		c.Close()
	}
	m.mu.Unlock()

	err := m.ln.Close()
	m.raft.Close()
	m.rpc.Close()
	m.wg.Wait()
	m.rpcT.CloseIdleConnections()
	if err != nil && !errors.Is(err, net.ErrClosed) {
		return fmt.Errorf("mtls: close listener: %w", err)
	}
	return nil
}

// subListener is the net.Listener side of one protocol.
type subListener struct {
	m    *Mux
	addr net.Addr
	ch   chan net.Conn // unbuffered: a conn is owned by exactly one side
	once sync.Once
	done chan struct{}
}

func newSubListener(m *Mux, addr net.Addr) *subListener {
	return &subListener{m: m, addr: addr, ch: make(chan net.Conn), done: make(chan struct{})}
}

// handoff gives c to Accept, or closes it if this listener or the mux
// closes first.
func (l *subListener) handoff(c net.Conn) {
	select {
	case l.ch <- c:
	case <-l.done:
		c.Close()
	case <-l.m.done:
		c.Close()
	}
}

// Accept waits for the next connection of this protocol.
func (l *subListener) Accept() (net.Conn, error) {
	select {
	case <-l.done:
		return nil, net.ErrClosed
	case <-l.m.done:
		return nil, net.ErrClosed
	default:
	}
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	case <-l.m.done:
		return nil, net.ErrClosed
	}
}

// Close stops this listener only.
func (l *subListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *subListener) Addr() net.Addr { return l.addr }

// raftLayer adapts a subListener to raft.StreamLayer.
type raftLayer struct{ *subListener }

// Dial connects to a raft peer within timeout, handshake included.
func (r raftLayer) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return r.m.dial(ctx, "tcp", string(address), ProtoRaft)
}
