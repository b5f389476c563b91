package sim

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// hostClient talks to one host over its control socket.
type hostClient struct {
	index int
	sock  string
	c     *http.Client
	tr    *http.Transport

	mu       sync.Mutex
	count    int
	capacity int
}

func newHostClient(k int, sock string) *hostClient {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
		MaxIdleConnsPerHost: 16,
		IdleConnTimeout:     time.Minute,
	}
	return &hostClient{index: k, sock: sock, tr: tr, c: &http.Client{Transport: tr, Timeout: 2 * time.Minute}}
}

func (h *hostClient) close() { h.tr.CloseIdleConnections() }

// statusError is a host's answer other than success.
type statusError struct {
	code int
	msg  string
}

func (e *statusError) Error() string { return fmt.Sprintf("host said %d: %s", e.code, e.msg) }

// maxListBody bounds a host's list: MaxHostCapacity lines of at most
// ~500 bytes.
const maxListBody = MaxHostCapacity * 512

// do sends a control request with in as its JSON body and decodes the
// JSON answer into out (when not nil).
func (h *hostClient) do(ctx context.Context, method, path string, in, out any) error {
	_, err := h.call(ctx, method, path, in, out)
	return err
}

func (h *hostClient) call(ctx context.Context, method, path string, in, out any) (int, error) {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return 0, err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://simhost"+path, body)
	if err != nil {
		return 0, err
	}
	resp, err := h.c.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxListBody))
	if err != nil {
		return resp.StatusCode, err
	}
	if resp.StatusCode >= 300 {
		return resp.StatusCode, &statusError{resp.StatusCode, strings.TrimSpace(string(b))}
	}
	if out != nil {
		if s, ok := out.(*string); ok {
			*s = string(b)
			return resp.StatusCode, nil
		}
		if err := json.Unmarshal(b, out); err != nil {
			return resp.StatusCode, fmt.Errorf("host's answer: %w", err)
		}
	}
	return resp.StatusCode, nil
}

func (h *hostClient) list(ctx context.Context) ([]record, error) {
	var body string
	if err := h.do(ctx, "GET", "/v1/instances", nil, &body); err != nil {
		return nil, err
	}
	return parseList(body)
}

// get fetches instance id; found is false when the host has none.
func (h *hostClient) get(ctx context.Context, id string, r *record) (bool, error) {
	err := h.do(ctx, "GET", "/v1/instances/"+id, nil, r)
	var se *statusError
	if errors.As(err, &se) && se.code == http.StatusNotFound {
		return false, nil
	}
	return err == nil, err
}

// create makes instance id on the host (or returns it); errFull when the
// host has no room.
func (h *hostClient) create(ctx context.Context, id string, cr createRequest) (record, bool, error) {
	var r record
	code, err := h.call(ctx, "PUT", "/v1/instances/"+id, cr, &r)
	var se *statusError
	if errors.As(err, &se) && se.code == http.StatusInsufficientStorage {
		h.mu.Lock()
		h.count = h.capacity
		h.mu.Unlock()
		return r, false, errFull
	}
	if err != nil {
		return r, false, err
	}
	made := code == http.StatusCreated
	if made {
		h.addCount(1)
	}
	return r, made, nil
}

func (h *hostClient) refresh(ctx context.Context) error {
	var s hostStats
	if err := h.do(ctx, "GET", "/v1/stats", nil, &s); err != nil {
		return err
	}
	h.mu.Lock()
	h.count, h.capacity = s.Count, s.Capacity
	h.mu.Unlock()
	return nil
}

func (h *hostClient) hasRoom() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.count < h.capacity
}

func (h *hostClient) addCount(n int) {
	h.mu.Lock()
	h.count = max(0, h.count+n)
	h.mu.Unlock()
}

func (h *hostClient) setCount(n int) {
	h.mu.Lock()
	h.count = n
	h.mu.Unlock()
}

// hostGone says whether host k is not running: no process holds its lock.
func (p *Provider) hostGone(k int) (bool, error) {
	f, err := os.OpenFile(p.lockPath(k), os.O_RDWR, 0)
	if errors.Is(err, os.ErrNotExist) {
		return true, nil
	}
	if err != nil {
		return false, err
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_SH|unix.LOCK_NB); err != nil {
		if errors.Is(err, unix.EWOULDBLOCK) {
			return false, nil
		}
		return false, err
	}
	_ = unix.Flock(int(f.Fd()), unix.LOCK_UN)
	return true, nil
}

// client returns the (cached) client of host k.
func (p *Provider) client(k int) *hostClient {
	p.mu.Lock()
	defer p.mu.Unlock()
	h := p.hosts[k]
	if h == nil {
		h = newHostClient(k, p.sockPath(k))
		p.hosts[k] = h
	}
	return h
}

// hostAt returns host k's client when the host runs; its stats are
// fetched the first time.
func (p *Provider) hostAt(ctx context.Context, k int) (*hostClient, bool, error) {
	if _, err := os.Lstat(p.sockPath(k)); errors.Is(err, os.ErrNotExist) {
		return nil, false, nil
	}
	if gone, err := p.hostGone(k); err != nil {
		return nil, false, err
	} else if gone {
		return nil, false, nil
	}
	h := p.client(k)
	h.mu.Lock()
	known := h.capacity > 0
	h.mu.Unlock()
	if !known {
		if err := h.refresh(ctx); err != nil {
			if gone, _ := p.hostGone(k); gone {
				return nil, false, nil
			}
			return nil, false, fmt.Errorf("host %d: %w", k, err)
		}
	}
	return h, true, nil
}

// liveHosts returns the running hosts, by index, found by their sockets.
func (p *Provider) liveHosts(ctx context.Context) ([]*hostClient, error) {
	des, err := os.ReadDir(p.hostsDir)
	if err != nil {
		return nil, fmt.Errorf("sim: %w", err)
	}
	var out []*hostClient
	for _, de := range des {
		name, ok := strings.CutSuffix(de.Name(), ".sock")
		if !ok {
			continue
		}
		k, err := strconv.Atoi(name)
		if err != nil || k < 0 || k >= MaxHosts || strconv.Itoa(k) != name {
			continue
		}
		h, alive, err := p.hostAt(ctx, k)
		if err != nil {
			return nil, fmt.Errorf("sim: %w", err)
		}
		if alive {
			out = append(out, h)
		}
	}
	// ReadDir sorts by name: "10" before "2".
	for i := 1; i < len(out); i++ {
		for j := i; j > 0 && out[j].index < out[j-1].index; j-- {
			out[j], out[j-1] = out[j-1], out[j]
		}
	}
	return out, nil
}

// startHost starts the lowest-numbered host that does not run and waits
// until it serves. The placement lock is held.
func (p *Provider) startHost(ctx context.Context) (*hostClient, error) {
	k := -1
	for i := range MaxHosts {
		if gone, err := p.hostGone(i); err != nil {
			return nil, err
		} else if gone {
			k = i
			break
		}
	}
	if k < 0 {
		return nil, fmt.Errorf("all %d sim hosts run and are full", MaxHosts)
	}
	logPath := filepath.Join(p.hostsDir, strconv.Itoa(k)+".log")
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	args := []string{"-dir", p.dir, "-index", strconv.Itoa(k), "-capacity", strconv.Itoa(p.capacity),
		"-health-flip-rate", strconv.FormatFloat(p.flipRate, 'g', -1, 64), "-seed", strconv.FormatUint(p.seed, 10)}
	if p.idleExit > 0 {
		args = append(args, "-idle-exit", p.idleExit.String())
	}
	// Not bound to ctx: the host outlives this call and the agent. Its
	// own session keeps it out of the agent's terminal signals.
	cmd := exec.Command(p.binary, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Dir = p.dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start host %d: %w", k, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }() // reaps it, whenever it ends
	p.log.Info("sim host started", zap.Int("host", k), zap.Int("pid", cmd.Process.Pid), zap.Int("capacity", p.capacity))

	h := p.client(k)
	deadline := time.Now().Add(hostStartWait)
	for wait := 2 * time.Millisecond; ; wait = min(2*wait, 100*time.Millisecond) {
		if _, err := os.Lstat(h.sock); err == nil {
			if err := h.refresh(ctx); err == nil {
				return h, nil
			}
		}
		t := time.NewTimer(wait)
		select {
		case err := <-exited:
			t.Stop()
			return nil, fmt.Errorf("host %d exited at its start (%v): %s", k, err, logTail(logPath))
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		case <-t.C:
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("host %d (pid %d) does not serve %s after %s: %s", k, cmd.Process.Pid, h.sock, hostStartWait, logTail(logPath))
		}
	}
}

func logTail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return strings.TrimSpace(string(b))
}

// StopHosts asks every running host of the sim directory dir to exit
// (their instances end with them) and waits until they have: the end of
// a benchmark.
func StopHosts(ctx context.Context, dir string) error {
	p := &Provider{hostsDir: filepath.Join(dir, "hosts"), hosts: map[int]*hostClient{}, log: zap.NewNop()}
	hosts, err := p.liveHosts(ctx)
	if err != nil {
		return err
	}
	var errs []error
	for _, h := range hosts {
		if err := h.do(ctx, "POST", "/v1/shutdown", nil, nil); err != nil {
			errs = append(errs, fmt.Errorf("host %d: %w", h.index, err))
		}
		h.close()
	}
	for _, h := range hosts {
		for wait := time.Millisecond; ; wait = min(2*wait, 50*time.Millisecond) {
			if gone, err := p.hostGone(h.index); err != nil || gone {
				break
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(wait):
			}
		}
	}
	return errors.Join(errs...)
}
