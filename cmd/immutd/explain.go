package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"syscall"
)

// explain turns an error of the API client into one line that says what
// went wrong and what to do about it. The client reports a failed
// request as "METHOD URL: *url.Error", which repeats the URL, and an
// error answer as "METHOD PATH: STATUS[: MESSAGE]"; the command's name
// already says what was asked, so neither the URL nor the path is kept.
func (r *remote) explain(err error) error {
	var ue *url.Error
	if !errors.As(err, &ue) {
		return r.explainAnswer(err)
	}
	if ue.Op == "parse" {
		return fmt.Errorf("-addr %s is not an address or URL: %v", r.addr, ue.Err)
	}
	var (
		verify *tls.CertificateVerificationError
		header tls.RecordHeaderError
		host   x509.HostnameError
		op     *net.OpError
	)
	switch {
	case errors.Is(err, context.Canceled):
		return errors.New("interrupted")
	case errors.As(err, &host):
		return fmt.Errorf("the TLS certificate of the immutd agent at %s is not valid for that address (%v): set -addr or IMMUTD_ADDR to a name or IP address the certificate carries", r.addr, host)
	case errors.As(err, &verify):
		hint := "set -ca-file or IMMUTD_CA_FILE to the CA certificate that signed the agent's API certificate"
		if r.caFile != "" {
			hint = "it is not signed by the CA in " + r.caFile + " (-ca-file or IMMUTD_CA_FILE)"
		}
		return fmt.Errorf("cannot verify the TLS certificate of the immutd agent at %s (%v): %s", r.addr, verify.Err, hint)
	case errors.Is(err, http.ErrSchemeMismatch) || errors.As(err, &header):
		return fmt.Errorf("the immutd agent at %s does not answer with TLS: use an http:// address in -addr or IMMUTD_ADDR, or give the agent's api block tls_cert_file and tls_key_file", r.addr)
	case errors.As(err, &op) && op.Op == "dial":
		return fmt.Errorf("cannot reach the immutd agent at %s (%s): is it running? Set -addr or IMMUTD_ADDR to its API address.", r.addr, reason(err))
	}
	return fmt.Errorf("no answer from the immutd agent at %s (%s)", r.addr, reason(err))
}

// reason is the cause at the bottom of a network error, without the
// addresses and operations wrapped around it: "connection refused".
func reason(err error) string {
	var (
		errno syscall.Errno
		dns   *net.DNSError
		nerr  net.Error
	)
	switch {
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &nerr) && nerr.Timeout():
		return "timed out"
	case errors.As(err, &errno):
		return errno.Error()
	case errors.As(err, &dns):
		return dns.Err
	}
	for {
		inner := errors.Unwrap(err)
		if inner == nil {
			return err.Error()
		}
		err = inner
	}
}

// explainAnswer keeps the status and message of an error answer, and
// adds what to do about a refused token.
func (r *remote) explainAnswer(err error) error {
	head, answer, ok := strings.Cut(err.Error(), ": ")
	if !ok || !strings.Contains(head, " /") {
		return err // not "METHOD PATH: ...": keep it whole
	}
	code, _, ok := strings.Cut(answer, " ")
	if status, convErr := strconv.Atoi(code); !ok || convErr != nil || len(code) != 3 {
		return err // "METHOD PATH: decode: ..." and the like
	} else if status == 401 {
		if r.tokenFile == "" {
			answer += "; no API token was sent: -token-file or IMMUTD_TOKEN_FILE passes it"
		} else {
			answer += "; the token in " + r.tokenFile + " was refused"
		}
	} else if status == 400 && !strings.Contains(answer, ": ") && !strings.HasPrefix(r.addr, "https://") {
		// An HTTPS server answers a plain HTTP request with a bare 400.
		answer += "; if the agent's API uses TLS, use an https:// address with -ca-file"
	}
	return errors.New(answer)
}
