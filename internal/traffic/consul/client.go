package consul

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/immutd/immutd/internal/traffic"
)

// boundTransport owns what every request to Consul carries and what it may
// return: the ACL token from the token file (replacing whatever the api
// client took from the environment), no namespace or partition taken from
// CONSUL_NAMESPACE / CONSUL_PARTITION (immutd does not support Consul
// Enterprise namespaces), and a response body of at most maxResponse bytes.
type boundTransport struct {
	base  http.RoundTripper
	token string
	limit int64 // maxResponse; smaller in tests
}

func (t *boundTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	r := req.Clone(req.Context())
	r.Header.Del("X-Consul-Token")
	if t.token != "" {
		r.Header.Set("X-Consul-Token", t.token)
	}
	if q := r.URL.Query(); q.Has("ns") || q.Has("partition") {
		q.Del("ns")
		q.Del("partition")
		r.URL.RawQuery = q.Encode()
	}
	resp, err := t.base.RoundTrip(r)
	if err != nil {
		return nil, err
	}
	resp.Body = &boundedBody{rc: resp.Body, left: t.limit}
	return resp, nil
}

// errBodyTooLarge is returned by the read past a response body's bound.
var errBodyTooLarge = errors.New("consul: response body too large")

type boundedBody struct {
	rc   io.ReadCloser
	left int64
}

func (b *boundedBody) Read(p []byte) (int, error) {
	if b.left <= 0 {
		var one [1]byte
		if n, err := b.rc.Read(one[:]); n > 0 {
			return 0, errBodyTooLarge
		} else if err != nil {
			return 0, err
		}
		return 0, nil
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.rc.Read(p)
	b.left -= int64(n)
	return n, err
}

func (b *boundedBody) Close() error { return b.rc.Close() }

// maxErrorBody bounds how much of an error answer's body an error quotes.
const maxErrorBody = 512

// classify turns an error of the api client into immutd's vocabulary: an
// HTTP error answer quotes its status and a bounded body; a transport
// failure (connection refused, DNS, timeout, reset) wraps
// traffic.ErrUnreachable; the end of the caller's ctx is returned as its
// context error. TLS verification failures are neither: Consul was
// reached, and the configuration is wrong.
func classify(ctx context.Context, err error) error {
	var se api.StatusError
	if errors.As(err, &se) {
		body := se.Body
		if len(body) > maxErrorBody {
			body = body[:maxErrorBody] + "…"
		}
		return fmt.Errorf("consul answered HTTP %d: %s", se.Code, strconv.Quote(body))
	}
	if ctx.Err() != nil {
		return fmt.Errorf("%w (%v)", ctx.Err(), err)
	}
	if isTLSError(err) {
		return fmt.Errorf("tls: %w", err)
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		return fmt.Errorf("%w: %w", traffic.ErrUnreachable, err)
	}
	return err
}

func isTLSError(err error) bool {
	var (
		unknownCA x509.UnknownAuthorityError
		hostname  x509.HostnameError
		invalid   x509.CertificateInvalidError
		verify    *tls.CertificateVerificationError
		record    tls.RecordHeaderError
		alert     tls.AlertError
	)
	return errors.As(err, &unknownCA) || errors.As(err, &hostname) ||
		errors.As(err, &invalid) || errors.As(err, &verify) || errors.As(err, &record) || errors.As(err, &alert)
}

// statusCode is the HTTP status of an error answer, or 0.
func statusCode(err error) int {
	var se api.StatusError
	if errors.As(err, &se) {
		return se.Code
	}
	return 0
}

// request derives the context of one request: ctx bounded by Timeout plus
// the wait of a blocking read.
func (b *Backend) request(ctx context.Context, wait time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, b.cfg.Timeout+wait+wait/16)
}
