package haproxy_test

import (
	"context"
	"errors"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/immutd/immutd/internal/instance"
	"github.com/immutd/immutd/internal/traffic"
	"github.com/immutd/immutd/internal/traffic/haproxy"
)

// New refuses a config it cannot work with and names the field.
func TestNewValidates(t *testing.T) {
	long := "/" + strings.Repeat("s", 107)
	for _, tc := range []struct {
		cfg  haproxy.Config
		want string // "" = valid
	}{
		{haproxy.Config{Socket: "/run/haproxy/admin.sock", Backend: "web"}, ""},
		{haproxy.Config{Socket: "/run/haproxy/admin.sock", Backend: "be_web-2.x:y", Check: true, Timeout: time.Second}, ""},
		{haproxy.Config{Backend: "web"}, "haproxy: config: socket: must be set to the path of the admin stats socket"},
		{haproxy.Config{Socket: "admin.sock", Backend: "web"}, `haproxy: config: socket "admin.sock": must be an absolute path`},
		{haproxy.Config{Socket: long, Backend: "web"}, "bytes, longer than the 107 a unix socket path can have"},
		{haproxy.Config{Socket: "/s", Backend: ""}, `haproxy: config: backend "": must be an HAProxy backend name`},
		{haproxy.Config{Socket: "/s", Backend: "web;del server web/x"}, `backend "web;del server web/x": must be an HAProxy backend name`},
		{haproxy.Config{Socket: "/s", Backend: "web x"}, `backend "web x": must be`},
		{haproxy.Config{Socket: "/s", Backend: "web", Timeout: -time.Second}, "haproxy: config: timeout -1s: must not be negative"},
	} {
		_, err := haproxy.New(tc.cfg, zaptest.NewLogger(t))
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%+v: %v", tc.cfg, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%+v: error %v, want it to contain %q", tc.cfg, err, tc.want)
		}
	}
	// All errors of a config together.
	_, err := haproxy.New(haproxy.Config{Timeout: -1}, nil)
	for _, want := range []string{"socket:", "backend", "timeout"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("empty config: error %v, want it to name %s", err, want)
		}
	}
}

func TestName(t *testing.T) {
	b, err := haproxy.New(haproxy.Config{Socket: "/s", Backend: "web"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := b.Name(); got != `haproxy "web"` {
		t.Errorf("Name() = %s", got)
	}
	if err := b.Close(); err != nil {
		t.Error(err)
	}
}

// Ids and addresses that cannot make a server, or would be read as more
// than one runtime API command, are refused before anything is sent: the
// socket does not exist, and the error is not "unreachable".
func TestHostileMembersRejected(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "none.sock")
	b, err := haproxy.New(haproxy.Config{Socket: sock, Backend: "web"}, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	badIDs := []string{
		"", "-x", ".x", "a b", "a;del server web/op", "a\nshow info", "../x", "a/b", "a\\b", "a#b",
		"a:b", "ä", strings.Repeat("a", 129), "a\x00",
	}
	for _, id := range badIDs {
		m := traffic.Member{InstanceID: id, Address: "127.0.0.1:8080"}
		check := func(op string, err error) {
			t.Helper()
			if err == nil || !strings.Contains(err.Error(), "instance id") ||
				!errors.Is(err, instance.ErrPermanent) || errors.Is(err, traffic.ErrUnreachable) {
				t.Errorf("%s id %q: error %v, want a permanent instance id error", op, id, err)
			}
		}
		check("admit", b.Admit(ctx, m))
		check("drain", b.Drain(ctx, m))
		check("remove", b.Remove(ctx, m))
		_, _, err := b.Connections(ctx, m)
		check("connections", err)
	}
	badAddrs := map[string]string{
		"":                          "want ip:port",
		"127.0.0.1":                 "want ip:port",
		"example.com:80":            "must be an IP address",
		"localhost:80":              "must be an IP address",
		"127.0.0.1:0":               "port must be a number 1-65535",
		"127.0.0.1:65536":           "port must be a number 1-65535",
		"127.0.0.1:http":            "port must be a number 1-65535",
		"127.0.0.1:+80":             "port must be a number 1-65535",
		"127.0.0.1:080":             "port must be a number 1-65535",
		"127.0.0.1:80;del server x": "port must be",
		"127.0.0.1 check:80":        "must be an IP address",
		"[fe80::1%eth0]:80":         "zone",
		"0.0.0.0:80":                "not a unicast address",
		"[::]:80":                   "not a unicast address",
		"224.0.0.1:80":              "not a unicast address",
		"::1:80":                    "want ip:port",
	}
	for addr, want := range badAddrs {
		err := b.Admit(ctx, traffic.Member{InstanceID: "web-1", Address: addr})
		if err == nil || !strings.Contains(err.Error(), "haproxy: admit web-1: address") || !strings.Contains(err.Error(), want) ||
			!errors.Is(err, instance.ErrPermanent) || errors.Is(err, traffic.ErrUnreachable) {
			t.Errorf("address %q: error %v, want it to contain %q", addr, err, want)
		}
	}
	// Sync refuses bad admitted members too, without sending.
	err = b.Sync(ctx, []traffic.Member{{InstanceID: "a;b", Address: "127.0.0.1:1"}}, func(string) bool { return true })
	if err == nil || !errors.Is(err, traffic.ErrUnreachable) {
		// The read of the backend comes first and fails: unreachable.
		t.Errorf("sync: %v", err)
	}
}

// A missing socket, and a socket that accepts but never answers, are
// "unreachable" errors that name the socket.
func TestUnreachableSocket(t *testing.T) {
	dir := t.TempDir()
	m := traffic.Member{InstanceID: "web-1", Address: "127.0.0.1:8080"}
	calls := func(b *haproxy.Backend) map[string]error {
		ctx := context.Background()
		_, _, cerr := b.Connections(ctx, m)
		return map[string]error{
			"admit":       b.Admit(ctx, m),
			"drain":       b.Drain(ctx, m),
			"remove":      b.Remove(ctx, m),
			"connections": cerr,
			"sync":        b.Sync(ctx, []traffic.Member{m}, func(string) bool { return true }),
		}
	}

	missing := filepath.Join(dir, "missing.sock")
	b, err := haproxy.New(haproxy.Config{Socket: missing, Backend: "web"}, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	for op, err := range calls(b) {
		if !errors.Is(err, traffic.ErrUnreachable) || !strings.Contains(err.Error(), missing) || !strings.Contains(err.Error(), "haproxy: "+op) {
			t.Errorf("%s with missing socket: %v", op, err)
		}
	}

	silent := filepath.Join(dir, "silent.sock")
	l, err := net.Listen("unix", silent)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() { // accept, read, never answer
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	b, err = haproxy.New(haproxy.Config{Socket: silent, Backend: "web", Timeout: 50 * time.Millisecond}, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	for op, err := range calls(b) {
		if !errors.Is(err, traffic.ErrUnreachable) || !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), silent) {
			t.Errorf("%s with silent socket: %v", op, err)
		}
	}
	// A canceled context ends a call at once, also as unreachable.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := b.Drain(ctx, m); !errors.Is(err, context.Canceled) || !errors.Is(err, traffic.ErrUnreachable) {
		t.Errorf("drain with canceled context: %v", err)
	}
}
