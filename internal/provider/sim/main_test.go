package sim

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/immutd/immutd/internal/instance"
)

// hostBinary is immutd-simhost, built once by TestMain.
var hostBinary string

func TestMain(m *testing.M) {
	tmp, err := os.MkdirTemp("", "simhost-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	hostBinary = filepath.Join(tmp, DefaultBinary)
	out, err := exec.Command("go", "build", "-o", hostBinary, "github.com/immutd/immutd/cmd/immutd-simhost").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "go build immutd-simhost: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(tmp)
	os.Exit(code)
}

// simDir is a fresh provider directory with a short path (the host
// sockets' paths must fit a unix socket address), whose hosts are
// stopped (and killed, by pid, if they do not stop) when t ends.
func simDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "sim")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := StopHosts(ctx, dir); err != nil {
			t.Logf("stop hosts: %v", err)
			for _, pid := range hostPIDs(t, dir) {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		os.RemoveAll(dir)
	})
	return dir
}

// hostPIDs returns the pids the hosts of dir recorded.
func hostPIDs(t *testing.T, dir string) map[int]int {
	t.Helper()
	out := map[int]int{}
	des, _ := os.ReadDir(filepath.Join(dir, "hosts"))
	for _, de := range des {
		name, ok := strings.CutSuffix(de.Name(), ".pid")
		if !ok {
			continue
		}
		k, err := strconv.Atoi(name)
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, "hosts", de.Name()))
		if err != nil {
			continue
		}
		if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
			out[k] = pid
		}
	}
	return out
}

// open opens a provider over dir with the test's host binary; hosts it
// starts exit by themselves once idle for a while, should a test leak one.
func open(t *testing.T, dir string, o Options) *Provider {
	t.Helper()
	o.Dir = dir
	o.Binary = hostBinary
	if o.HostIdleExit == 0 {
		o.HostIdleExit = 10 * time.Minute
	}
	p, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// testImage makes an image directory (with sim.json, if given) and
// imports it.
func testImage(t *testing.T, p *Provider, content, simJSON string) string {
	t.Helper()
	d := t.TempDir()
	if err := os.WriteFile(filepath.Join(d, "app.txt"), []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	if simJSON != "" {
		if err := os.WriteFile(filepath.Join(d, simConfigFile), []byte(simJSON), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	digest, err := p.Import(t.Context(), d)
	if err != nil {
		t.Fatal(err)
	}
	return digest
}

func request(id, fleet, digest string) instance.LaunchRequest {
	l := instance.Launch{Env: map[string]string{"X": "1"}}
	return instance.LaunchRequest{InstanceID: id, Fleet: fleet, ImageDigest: digest, TemplateHash: instance.TemplateHash(Name, l), Launch: l}
}

// control sends a control request to host k of dir, as an operator (or
// a benchmark) would, without the provider.
func control(t *testing.T, dir string, k int, method, path string, in, out any) error {
	t.Helper()
	h := newHostClient(k, filepath.Join(dir, "hosts", strconv.Itoa(k)+".sock"))
	defer h.close()
	return h.do(t.Context(), method, path, in, out)
}

// hostOf returns the host index of an observed instance (its ProviderRef, "h<k>:<port>").
func hostOf(t *testing.T, o instance.Observed) int {
	t.Helper()
	s, _, _ := strings.Cut(strings.TrimPrefix(o.ProviderRef, "h"), ":")
	k, err := strconv.Atoi(s)
	if err != nil {
		t.Fatalf("provider ref %q: %v", o.ProviderRef, err)
	}
	return k
}

// get returns the status code of GET http://addr/healthz, or 0 when it
// cannot connect.
func get(addr string) int {
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Get("http://" + addr + "/healthz")
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// eventually polls cond until it holds or limit passes.
func eventually(t *testing.T, what string, limit time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for wait := 5 * time.Millisecond; !cond(); wait = min(2*wait, 200*time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting after %s for %s", limit, what)
		}
		time.Sleep(wait)
	}
}
