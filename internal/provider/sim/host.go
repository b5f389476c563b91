package sim

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/immutd/immutd/internal/instance"
)

// HostOptions configures one host process (cmd/immutd-simhost).
type HostOptions struct {
	// Dir is the provider directory; the host serves its control API on
	// <Dir>/hosts/<Index>.sock and holds <Dir>/hosts/<Index>.lock for
	// its life.
	Dir   string
	Index int
	// Capacity is how many instances it serves (default
	// DefaultHostCapacity, at most MaxHostCapacity); MaxConns bounds the
	// connections it accepts (default what the open-file limit leaves
	// after Capacity and 64 more). Both must fit the open-file limit.
	Capacity int
	MaxConns int
	// HealthFlipRate is the fraction of its healthy instances per minute
	// whose health flips to failing; Seed makes the picks reproducible.
	HealthFlipRate float64
	Seed           uint64
	// IdleExit, when positive, ends the host once it has served no
	// instance for that long.
	IdleExit time.Duration
	// Log receives the host's few log lines. Default: stderr.
	Log io.Writer
}

// simInst is one instance of a host.
type simInst struct {
	rec   record
	slot  int
	lfd   int // listening socket, -1 once exited
	conns map[int]struct{}
	// failing is the health flip; read by the data plane under h.mu.
	failing bool
	pos     int // index in h.order
	timer   *time.Timer
}

// host is the state of one host process.
type host struct {
	o    HostOptions
	ip   netip.Addr
	epfd int

	mu       sync.Mutex
	insts    map[string]*simInst
	order    []*simInst // for random picks
	free     []int      // free port slots, as a stack
	fds      map[int]*fdEntry
	nconns   int
	maxConns int
	refused  int64
	clock    int64 // seconds, coarse
	rng      *rand.Rand
	flipAcc  float64
	idleFrom time.Time
}

// connIdle is how long a connection may stay silent before the host
// closes it; connSweep how often it looks.
const (
	connIdle  = 90 * time.Second
	connSweep = 15 * time.Second
)

// RunHost serves instances until ctx ends or the host is told to shut
// down. It fails at once when another host holds Index's lock, or when
// Capacity and MaxConns do not fit the open-file limit.
func RunHost(ctx context.Context, o HostOptions) error {
	if o.Log == nil {
		o.Log = os.Stderr
	}
	dir, err := filepath.Abs(o.Dir)
	if err != nil {
		return fmt.Errorf("simhost: dir: %w", err)
	}
	o.Dir = dir
	if o.Index < 0 || o.Index >= MaxHosts {
		return fmt.Errorf("simhost: index %d: want 0 to %d", o.Index, MaxHosts-1)
	}
	if o.Capacity == 0 {
		o.Capacity = DefaultHostCapacity
	}
	if o.Capacity < 1 || o.Capacity > MaxHostCapacity {
		return fmt.Errorf("simhost: capacity %d: want 1 to %d", o.Capacity, MaxHostCapacity)
	}
	var lim unix.Rlimit
	limited := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim) == nil // Go raised the soft limit to the hard one at start
	if o.MaxConns == 0 {
		// What the open-file limit leaves: several agents each keep a
		// probe connection per instance.
		o.MaxConns = 2 * o.Capacity
		if limited && lim.Cur > uint64(o.Capacity+64) {
			o.MaxConns = int(min(lim.Cur-uint64(o.Capacity)-64, 1<<20))
		}
	}
	if o.MaxConns < 1 {
		return fmt.Errorf("simhost: max conns %d: want at least 1", o.MaxConns)
	}
	if err := checkFlipRate(o.HealthFlipRate); err != nil {
		return fmt.Errorf("simhost: %w", err)
	}
	if limited {
		if need := uint64(o.Capacity + o.MaxConns + 64); need > lim.Cur {
			return fmt.Errorf("simhost: capacity %d plus max conns %d need %d descriptors; the open-file limit is %d: lower them",
				o.Capacity, o.MaxConns, need, lim.Cur)
		}
	}
	hostsDir := filepath.Join(o.Dir, "hosts")
	lock, err := os.OpenFile(filepath.Join(hostsDir, strconv.Itoa(o.Index)+".lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return fmt.Errorf("simhost: %w", err)
	}
	defer lock.Close()
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		return fmt.Errorf("simhost: host %d of %s is running already (its lock is held): %w", o.Index, o.Dir, err)
	}
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return fmt.Errorf("simhost: epoll: %w", err)
	}
	h := &host{o: o, ip: hostIP(o.Dir, o.Index), epfd: epfd, insts: map[string]*simInst{}, fds: map[int]*fdEntry{},
		maxConns: o.MaxConns, rng: rand.New(rand.NewPCG(o.Seed, uint64(o.Index))), idleFrom: time.Now()}
	h.free = make([]int, o.Capacity)
	for i := range h.free {
		h.free[i] = o.Capacity - 1 - i // slot 0 on top
	}

	sock := filepath.Join(hostsDir, strconv.Itoa(o.Index)+".sock")
	_ = os.Remove(sock) // stale: the lock says no host serves it
	old := unix.Umask(0o177)
	ln, err := net.Listen("unix", sock)
	unix.Umask(old)
	if err != nil {
		return fmt.Errorf("simhost: control socket: %w", err)
	}
	if err := os.Chmod(sock, 0o600); err != nil {
		ln.Close()
		return fmt.Errorf("simhost: %w", err)
	}
	pidFile := filepath.Join(hostsDir, strconv.Itoa(o.Index)+".pid")
	if err := os.WriteFile(pidFile, []byte(strconv.Itoa(os.Getpid())+"\n"), 0o600); err != nil {
		ln.Close()
		return fmt.Errorf("simhost: %w", err)
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	srv := &http.Server{Handler: h.routes(cancel), ReadHeaderTimeout: 10 * time.Second, MaxHeaderBytes: 16 << 10}
	errc := make(chan error, 3)
	go func() { errc <- h.serve() }()
	go func() { errc <- srv.Serve(ln) }()
	go h.tick(ctx, cancel)
	fmt.Fprintf(o.Log, "simhost %d: serving up to %d instances on %s ports %d-%d, control %s, pid %d\n",
		o.Index, o.Capacity, h.ip, basePort, basePort+o.Capacity-1, sock, os.Getpid())
	select {
	case <-ctx.Done():
		err = nil
	case err = <-errc:
	}
	// Remove the socket before the lock goes: a provider that finds no
	// socket starts a new host, one that finds a socket but a free lock
	// knows this one is gone.
	_ = os.Remove(sock)
	_ = os.Remove(pidFile)
	_ = srv.Close()
	fmt.Fprintf(o.Log, "simhost %d: exiting: %v\n", o.Index, err)
	return err
}

func checkFlipRate(r float64) error {
	if math.IsNaN(r) || r < 0 || r > 1 {
		return fmt.Errorf("health flip rate %v: want a fraction per minute from 0 to 1", r)
	}
	return nil
}

// tick is the host's one timer: the coarse clock, the health flips, the
// sweep of silent connections and the idle exit.
func (h *host) tick(ctx context.Context, stop func()) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	start := time.Now()
	lastSweep := start
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			h.mu.Lock()
			h.clock = int64(now.Sub(start) / time.Second)
			h.flip()
			if now.Sub(lastSweep) >= connSweep {
				lastSweep = now
				cut := h.clock - int64(connIdle/time.Second)
				for fd, e := range h.fds {
					if !e.listener && e.last < cut {
						h.closeFD(fd)
					}
				}
			}
			idle := len(h.insts) == 0 && h.o.IdleExit > 0 && now.Sub(h.idleFrom) >= h.o.IdleExit
			h.mu.Unlock()
			if idle {
				fmt.Fprintf(h.o.Log, "simhost %d: no instance for %s, exiting\n", h.o.Index, h.o.IdleExit)
				stop()
				return
			}
		}
	}
}

// flip turns the health of rate/60 of the healthy running instances to
// failing, each second (fractions carry over). h.mu is held.
func (h *host) flip() {
	if h.o.HealthFlipRate <= 0 || len(h.order) == 0 {
		return
	}
	healthy := 0
	for _, in := range h.order {
		if !in.failing && !in.rec.Exited {
			healthy++
		}
	}
	h.flipAcc += h.o.HealthFlipRate / 60 * float64(healthy)
	for ; h.flipAcc >= 1 && healthy > 0; h.flipAcc-- {
		// Random picks until a healthy one: healthy is at least one.
		for {
			in := h.order[h.rng.IntN(len(h.order))]
			if !in.failing && !in.rec.Exited {
				in.failing = true
				healthy--
				break
			}
		}
	}
}

// errFull is a create on a host with no free slot.
var errFull = errors.New("host is full")

// create makes instance id, or returns the one of that id. h.mu is held.
func (h *host) create(id string, req createRequest) (*simInst, bool, error) {
	if in, ok := h.insts[id]; ok {
		return in, false, nil
	}
	for len(h.free) > 0 {
		slot := h.free[len(h.free)-1]
		h.free = h.free[:len(h.free)-1]
		port := basePort + slot
		in := &simInst{slot: slot, rec: record{ID: id, Fleet: req.Fleet, ImageDigest: req.ImageDigest, TemplateHash: req.TemplateHash,
			Address: netip.AddrPortFrom(h.ip, uint16(port)).String(), StartedAt: time.Now(), Stubborn: req.Stubborn}}
		fd, err := h.openListener(in, port)
		if errors.Is(err, unix.EADDRINUSE) {
			// Someone else holds this port: the slot stays out of use.
			fmt.Fprintf(h.o.Log, "simhost %d: %s is in use, skipping it\n", h.o.Index, in.rec.Address)
			continue
		}
		if err != nil {
			h.free = append(h.free, slot)
			return nil, false, err
		}
		in.lfd = fd
		in.pos = len(h.order)
		h.order = append(h.order, in)
		h.insts[id] = in
		if req.ExitAfter > 0 {
			in.timer = time.AfterFunc(req.ExitAfter, func() {
				h.mu.Lock()
				defer h.mu.Unlock()
				if h.insts[id] == in {
					h.exit(in, fmt.Sprintf("exited by itself %s after it started (the image's exit_after)", req.ExitAfter))
				}
			})
		}
		return in, true, nil
	}
	return nil, false, errFull
}

// exit stops an instance answering; it stays listed, exited. h.mu is held.
func (h *host) exit(in *simInst, reason string) {
	if in.rec.Exited {
		return
	}
	h.closeSockets(in)
	in.rec.Exited, in.rec.ExitReason = true, reason
}

// remove deletes an instance. h.mu is held.
func (h *host) remove(in *simInst) {
	if in.timer != nil {
		in.timer.Stop()
	}
	h.closeSockets(in)
	delete(h.insts, in.rec.ID)
	last := h.order[len(h.order)-1]
	h.order[in.pos] = last
	last.pos = in.pos
	h.order = h.order[:len(h.order)-1]
	h.free = append(h.free, in.slot)
	if len(h.insts) == 0 {
		h.idleFrom = time.Now()
	}
}

func (in *simInst) snapshot() record {
	r := in.rec
	r.Failing = in.failing
	r.Mutations = append([]string(nil), in.rec.Mutations...)
	return r
}

// routes is the control API.
func (h *host) routes(shutdown func()) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/stats", func(w http.ResponseWriter, r *http.Request) {
		h.mu.Lock()
		s := hostStats{Index: h.o.Index, PID: os.Getpid(), Capacity: h.o.Capacity, Count: len(h.insts), Conns: h.nconns, MaxConns: h.maxConns}
		h.mu.Unlock()
		writeJSON(w, http.StatusOK, s)
	})
	mux.HandleFunc("GET /v1/instances", func(w http.ResponseWriter, r *http.Request) {
		h.mu.Lock()
		b := make([]byte, 0, len(h.order)*200)
		for _, in := range h.order {
			rec := in.rec
			rec.Failing = in.failing
			b = appendLine(b, &rec)
		}
		h.mu.Unlock()
		w.Header().Set("Content-Type", "text/tab-separated-values")
		_, _ = w.Write(b)
	})
	mux.HandleFunc("GET /v1/instances/{id}", h.withInstance(func(w http.ResponseWriter, r *http.Request, in *simInst) {
		writeJSON(w, http.StatusOK, in.snapshot())
	}))
	mux.HandleFunc("PUT /v1/instances/{id}", func(w http.ResponseWriter, r *http.Request) {
		id := r.PathValue("id")
		if err := instance.CheckID(id); err != nil {
			httpError(w, http.StatusBadRequest, err)
			return
		}
		var req createRequest
		if !readJSON(w, r, &req) {
			return
		}
		if err := req.check(); err != nil {
			httpError(w, http.StatusBadRequest, err)
			return
		}
		h.mu.Lock()
		in, made, err := h.create(id, req)
		var rec record
		if err == nil {
			rec = in.snapshot()
		}
		h.mu.Unlock()
		switch {
		case errors.Is(err, errFull):
			httpError(w, http.StatusInsufficientStorage, err)
		case err != nil:
			httpError(w, http.StatusInternalServerError, err)
		case made:
			writeJSON(w, http.StatusCreated, rec)
		default:
			writeJSON(w, http.StatusOK, rec)
		}
	})
	mux.HandleFunc("DELETE /v1/instances/{id}", func(w http.ResponseWriter, r *http.Request) {
		h.mu.Lock()
		if in, ok := h.insts[r.PathValue("id")]; ok {
			h.remove(in)
		}
		h.mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("POST /v1/instances/{id}/health", h.withInstance(func(w http.ResponseWriter, r *http.Request, in *simInst) {
		var body struct {
			Health string `json:"health"`
		}
		if !readJSON(w, r, &body) {
			return
		}
		if body.Health != "healthy" && body.Health != "failing" {
			httpError(w, http.StatusBadRequest, fmt.Errorf("health %q: want healthy or failing", body.Health))
			return
		}
		h.mu.Lock()
		in.failing = body.Health == "failing"
		h.mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	}))
	mux.HandleFunc("POST /v1/instances/{id}/exit", h.withInstance(func(w http.ResponseWriter, r *http.Request, in *simInst) {
		h.mu.Lock()
		h.exit(in, "crashed (simulated: exit requested through the host's control API)")
		h.mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	}))
	mux.HandleFunc("POST /v1/instances/{id}/mutate", h.withInstance(func(w http.ResponseWriter, r *http.Request, in *simInst) {
		var body struct {
			Path string `json:"path"`
		}
		if !readJSON(w, r, &body) {
			return
		}
		if err := checkMutation(body.Path); err != nil {
			httpError(w, http.StatusBadRequest, err)
			return
		}
		h.mu.Lock()
		defer h.mu.Unlock()
		if len(in.rec.Mutations) >= maxMutations {
			httpError(w, http.StatusBadRequest, fmt.Errorf("instance has %d changes already, the most it keeps", maxMutations))
			return
		}
		in.rec.Mutations = append(in.rec.Mutations, body.Path)
		w.WriteHeader(http.StatusNoContent)
	}))
	mux.HandleFunc("POST /v1/config", func(w http.ResponseWriter, r *http.Request) {
		var c hostConfig
		if !readJSON(w, r, &c) {
			return
		}
		if err := checkFlipRate(c.HealthFlipRate); err != nil {
			httpError(w, http.StatusBadRequest, err)
			return
		}
		h.mu.Lock()
		if c.HealthFlipRate != h.o.HealthFlipRate || c.Seed != h.o.Seed {
			h.o.HealthFlipRate, h.o.Seed = c.HealthFlipRate, c.Seed
			h.rng = rand.New(rand.NewPCG(c.Seed, uint64(h.o.Index)))
			h.flipAcc = 0
		}
		h.mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("POST /v1/shutdown", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusNoContent)
		shutdown()
	})
	return mux
}

// checkMutation checks a simulated changed path: a relative slash path.
func checkMutation(p string) error {
	if p == "" || len(p) > maxMutationLen || strings.HasPrefix(p, "/") || strings.ContainsAny(p, "\x00\t\r\n") {
		return fmt.Errorf("path %q: want a relative path of 1-%d characters without NUL, tabs or newlines", p, maxMutationLen)
	}
	for seg := range strings.SplitSeq(p, "/") {
		if seg == "" || seg == "." || seg == ".." {
			return fmt.Errorf("path %q: empty, \".\" and \"..\" segments are not allowed", p)
		}
	}
	return nil
}

func (h *host) withInstance(fn func(http.ResponseWriter, *http.Request, *simInst)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		h.mu.Lock()
		in, ok := h.insts[r.PathValue("id")]
		h.mu.Unlock()
		if !ok {
			httpError(w, http.StatusNotFound, fmt.Errorf("no instance %q", r.PathValue("id")))
			return
		}
		fn(w, r, in)
	}
}

func readJSON(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxControlBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		httpError(w, http.StatusBadRequest, fmt.Errorf("body: %w", err))
		return false
	}
	return true
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func httpError(w http.ResponseWriter, code int, err error) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(code)
	_, _ = io.WriteString(w, err.Error()+"\n")
}
