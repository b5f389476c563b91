package probe

import (
	"context"
	"net"
	"strconv"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/immutd/immutd/internal/state"
)

// KindGRPC is a call of grpc.health.v1.Health/Check on the instance's
// address, passing when the answer is SERVING.
//
// The call is plaintext (HTTP/2 without TLS): instances listen on
// loopback or on a private network, like the HTTP checks they replace.
const KindGRPC = "grpc"

// Bounds of what a gRPC probe reads. A health answer is a few bytes.
const (
	grpcMaxRecvMsg    = 4 << 10
	grpcMaxHeaderList = 64 << 10
)

// grpcChecker runs grpc checks. It keeps one client connection per
// instance and address, shared by the instance's grpc checks, so steady
// probing does not reconnect.
//
// A connection on which a call failed for any reason other than the
// server's own answer (a response, NOT_FOUND for an unknown service,
// UNIMPLEMENTED for a server without the health service) is closed, so
// the next probe dials afresh within its own timeout: gRPC's reconnect
// backoff (up to two minutes) would otherwise keep failing an instance
// that has started answering.
type grpcChecker struct {
	dialer *net.Dialer

	mu    sync.Mutex
	conns map[probed]*grpcConn
}

// grpcConn is one pooled connection.
type grpcConn struct {
	at     probed
	cc     *grpc.ClientConn
	health healthpb.HealthClient
	// users counts the probes using cc, and gone says it left the pool:
	// the last user closes it. Both under grpcChecker.mu.
	users int
	gone  bool

	mu      sync.Mutex
	dialErr error // the latest dial error, for the detail
}

func newGRPCChecker(env checkEnv) *grpcChecker {
	return &grpcChecker{dialer: env.dialer, conns: make(map[probed]*grpcConn)}
}

func (g *grpcChecker) normalize(c state.Check) state.Check { return c }

// describe is "grpc.health.v1.Health/Check 127.0.0.1:4012", with
// ` service "name"` appended when the check names one.
func (g *grpcChecker) describe(c state.Check, address string) string {
	op := healthpb.Health_Check_FullMethodName[1:] + " " + address
	if c.Service != "" {
		op += " service " + strconv.Quote(c.Service)
	}
	return op
}

// run performs one gRPC health check.
func (g *grpcChecker) run(ctx context.Context, j *job) (bool, string) {
	c, err := g.acquire(ctx, probed{id: j.t.id, address: j.address})
	if err != nil {
		return false, j.describe(ctx, err)
	}
	resp, err := c.health.Check(ctx, &healthpb.HealthCheckRequest{Service: j.check.Service})
	if err == nil {
		g.done(c, false)
		st := resp.GetStatus()
		return st == healthpb.HealthCheckResponse_SERVING, st.String()
	}
	code := status.Code(err)
	answered := code == codes.NotFound || code == codes.Unimplemented
	g.done(c, !answered)
	switch {
	case code == codes.NotFound:
		// The health protocol's answer for a service it does not know.
		return false, healthpb.HealthCheckResponse_SERVICE_UNKNOWN.String()
	case ctx.Err() != nil:
		return false, j.describe(ctx, ctx.Err())
	case code == codes.Unavailable:
		c.mu.Lock()
		dialErr := c.dialErr
		c.mu.Unlock()
		if dialErr != nil {
			return false, j.describe(ctx, dialErr)
		}
	}
	return false, clip(code.String() + ": " + status.Convert(err).Message())
}

// acquire returns the pooled connection to at, making it if need be.
// The caller must call done with it.
func (g *grpcChecker) acquire(ctx context.Context, at probed) (*grpcConn, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	// Set cancels a dropped instance's probes before it releases its
	// connection: checking under the lock means no connection is made
	// for an instance after its release.
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if c := g.conns[at]; c != nil {
		c.users++
		return c, nil
	}
	c := &grpcConn{at: at}
	cc, err := grpc.NewClient("passthrough:///"+at.address,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		// A dialer of our own: the prober's, and never a proxy.
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			conn, err := g.dialer.DialContext(ctx, "tcp", addr)
			if err != nil {
				c.mu.Lock()
				c.dialErr = err
				c.mu.Unlock()
			}
			return conn, err
		}),
		grpc.WithUserAgent(userAgent),
		grpc.WithDisableRetry(),
		grpc.WithDisableServiceConfig(),
		grpc.WithMaxHeaderListSize(grpcMaxHeaderList),
		// No read buffer: a probe reads a few frames; thousands of idle
		// connections should not hold 32 KiB each.
		grpc.WithReadBufferSize(0),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(grpcMaxRecvMsg)),
	)
	if err != nil {
		return nil, err
	}
	c.cc, c.health = cc, healthpb.NewHealthClient(cc)
	c.users = 1
	g.conns[at] = c
	return c, nil
}

// done ends a probe's use of c; broken takes c out of the pool.
func (g *grpcChecker) done(c *grpcConn, broken bool) {
	g.mu.Lock()
	c.users--
	if broken {
		g.drop(c)
	}
	closing := c.gone && c.users == 0
	g.mu.Unlock()
	if closing {
		c.cc.Close()
	}
}

// drop takes c out of the pool. g.mu must be held.
func (g *grpcChecker) drop(c *grpcConn) {
	if g.conns[c.at] == c {
		delete(g.conns, c.at)
	}
	c.gone = true
}

func (g *grpcChecker) release(instanceID, address string) {
	g.mu.Lock()
	c := g.conns[probed{id: instanceID, address: address}]
	closing := false
	if c != nil {
		g.drop(c)
		closing = c.users == 0
	}
	g.mu.Unlock()
	if closing {
		c.cc.Close()
	}
}

func (g *grpcChecker) closeIdle() {
	var idle []*grpcConn
	g.mu.Lock()
	for _, c := range g.conns {
		g.drop(c)
		if c.users == 0 {
			idle = append(idle, c)
		}
	}
	g.mu.Unlock()
	for _, c := range idle {
		c.cc.Close()
	}
}
