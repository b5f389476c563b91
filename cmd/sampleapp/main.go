// Command sampleapp is the tiny HTTP service immutd's examples launch as
// a golden image. It serves its version, its instance identity and its
// configuration file, and a health endpoint that can be made to fail on
// demand:
//
//	GET  /           version, $IMMUTD_INSTANCE_ID, $IMMUTD_FLEET, config/app.conf
//	GET  /slow?ms=N  answers after N milliseconds (at most a minute)
//	GET  /healthz    200 "ok"; 503 "starting" until -ready-after has passed;
//	                 500 "failing" once failing
//	POST /fail       make /healthz, / and /slow fail (500) from now on
//	POST /recover    make them pass again
//	GET  /metrics    sampleapp_requests_total and sampleapp_errors_total
//	                 (answers of 500 or above), Prometheus text format
//	POST /write?path=P  only with -allow-writes: writes the body (at most
//	                 1 MiB) to P, a file or a block device, and syncs it:
//	                 a change made in place from inside the instance, for
//	                 tests of drift on a VM
//
// -error-after D makes / and /slow fail after D while /healthz still
// passes: a version broken in a way its health check does not see, which
// only its error metrics tell.
//
// With -grpc-health it also serves the standard gRPC health service,
// grpc.health.v1.Health, on the same port, as HTTP/2 without TLS next to
// HTTP/1.1: the server ("" service) is SERVING exactly when /healthz
// answers 200, NOT_SERVING while it warms up or fails. One port is all an
// instance gets, so both protocols share it; a request is gRPC when it
// comes over HTTP/2 with an application/grpc content type.
//
// It listens on $HOST:$PORT ($HOST defaults to 127.0.0.1; a container
// image sets HOST=0.0.0.0), or on -addr when PORT is not set, and shuts
// down gracefully on SIGTERM or SIGINT. The version is set at build time
// with -ldflags "-X main.version=1.0.0".
//
// For tests that change a running container in place, the binary has no
// shell to lean on, so "sampleapp -write-file PATH -content TEXT" writes
// TEXT to PATH and exits instead of serving.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// version is set with -ldflags "-X main.version=...".
var version = "dev"

// configFile is read from the working directory on every GET /.
const configFile = "config/app.conf"

func main() {
	os.Exit(run(os.Args[1:], os.Getenv, os.Stderr))
}

func run(args []string, getenv func(string) string, stderr io.Writer) int {
	fs := flag.NewFlagSet("sampleapp", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", "127.0.0.1:8080", "listen address when $PORT is not set")
	failAfter := fs.Duration("fail-after", 0, "start failing /healthz after this long (0: never)")
	errorAfter := fs.Duration("error-after", 0, "start failing / and /slow (not /healthz) after this long (0: never)")
	readyAfter := fs.Duration("ready-after", 0, "answer /healthz with 503 until this long after the start, like an app warming up")
	ignoreTerm := fs.Bool("ignore-sigterm", false, "log and ignore SIGTERM (stop only on SIGINT or SIGKILL)")
	grpcHealth := fs.Bool("grpc-health", false, "also serve grpc.health.v1.Health on the same port (HTTP/2 without TLS), SERVING while /healthz passes")
	showVersion := fs.Bool("version", false, "print the version and exit")
	writeFile := fs.String("write-file", "", "(for tests) write -content to this file and exit")
	content := fs.String("content", "", "(for tests) what -write-file writes")
	allowWrites := fs.Bool("allow-writes", false, "(for tests) serve POST /write?path=P, which writes the body to P")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	logger := log.New(stderr, "sampleapp: ", log.LstdFlags)
	if *showVersion {
		fmt.Fprintln(stderr, version)
		return 0
	}
	if *writeFile != "" {
		if err := os.WriteFile(*writeFile, []byte(*content), 0o644); err != nil {
			logger.Printf("write file: %v", err)
			return 1
		}
		return 0
	}
	listenAddr := *addr
	if port := getenv("PORT"); port != "" {
		host := getenv("HOST")
		if host == "" {
			host = "127.0.0.1"
		}
		listenAddr = net.JoinHostPort(host, port)
	}

	app := &app{
		version:  version,
		instance: getenv("IMMUTD_INSTANCE_ID"),
		fleet:    getenv("IMMUTD_FLEET"),
		image:    getenv("IMMUTD_IMAGE_DIGEST"),
		writes:   *allowWrites,
		logger:   logger,
	}
	if *grpcHealth {
		app.enableGRPCHealth()
	}
	if *readyAfter > 0 {
		app.setWarming(true)
		t := time.AfterFunc(*readyAfter, func() {
			app.setWarming(false)
			logger.Printf("ready (-ready-after %s)", *readyAfter)
		})
		defer t.Stop()
	}
	if *errorAfter > 0 {
		t := time.AfterFunc(*errorAfter, func() {
			app.erring.Store(true)
			logger.Printf("erring now (-error-after %s)", *errorAfter)
		})
		defer t.Stop()
	}
	if *failAfter > 0 {
		t := time.AfterFunc(*failAfter, func() {
			app.setFailing(true)
			logger.Printf("failing now (-fail-after %s)", *failAfter)
		})
		defer t.Stop()
	}

	ln, err := net.Listen("tcp", listenAddr)
	if err != nil {
		logger.Printf("listen: %v", err)
		return 1
	}
	srv := app.server()

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sigs)
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()
	logger.Printf("version %s listening on %s", version, ln.Addr())

	for {
		select {
		case err := <-serveErr:
			logger.Printf("serve: %v", err)
			return 1
		case sig := <-sigs:
			if sig == syscall.SIGTERM && *ignoreTerm {
				logger.Printf("ignoring SIGTERM")
				continue
			}
			logger.Printf("received %s, shutting down", sig)
			app.stopGRPC()
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			err := srv.Shutdown(ctx)
			cancel()
			if err != nil {
				logger.Printf("shutdown: %v", err)
				return 1
			}
			if err := <-serveErr; err != nil && !errors.Is(err, http.ErrServerClosed) {
				logger.Printf("serve: %v", err)
				return 1
			}
			logger.Printf("stopped")
			return 0
		}
	}
}

// app holds the service's state.
type app struct {
	version  string
	instance string
	fleet    string
	image    string
	failing  atomic.Bool
	warming  atomic.Bool // true until -ready-after has passed
	erring   atomic.Bool // / and /slow fail, /healthz passes (-error-after)
	writes   bool        // POST /write is served (-allow-writes)
	logger   *log.Logger
	// requests and errors count the answers, errors those of 500 or above.
	requests, errors atomic.Int64

	// With -grpc-health: the gRPC server of the health service, and the
	// service, whose status follows failing and warming (under mu).
	grpc   *grpc.Server
	health *health.Server
	mu     sync.Mutex
}

// enableGRPCHealth adds the gRPC health service.
func (a *app) enableGRPCHealth() {
	a.grpc = grpc.NewServer()
	a.health = health.NewServer()
	healthpb.RegisterHealthServer(a.grpc, a.health)
	a.syncHealth()
}

func (a *app) setFailing(v bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.failing.Store(v)
	a.syncHealth()
}

func (a *app) setWarming(v bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.warming.Store(v)
	a.syncHealth()
}

// syncHealth sets the gRPC health status from failing and warming.
func (a *app) syncHealth() {
	if a.health == nil {
		return
	}
	st := healthpb.HealthCheckResponse_SERVING
	if a.failing.Load() || a.warming.Load() {
		st = healthpb.HealthCheckResponse_NOT_SERVING
	}
	a.health.SetServingStatus("", st)
}

// stopGRPC ends the gRPC streams in progress, so that the HTTP server's
// graceful shutdown does not wait for them.
func (a *app) stopGRPC() {
	if a.grpc != nil {
		a.health.Shutdown()
		a.grpc.Stop()
	}
}

// server is the HTTP server of the app: HTTP/1.1, and with -grpc-health
// also HTTP/2 without TLS (prior knowledge, as gRPC clients speak it).
func (a *app) server() *http.Server {
	srv := &http.Server{Handler: a.handler(), ReadHeaderTimeout: 5 * time.Second}
	if a.grpc != nil {
		var p http.Protocols
		p.SetHTTP1(true)
		p.SetUnencryptedHTTP2(true)
		srv.Protocols = &p
	}
	return srv
}

func (a *app) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", a.index)
	mux.HandleFunc("GET /healthz", a.healthz)
	mux.HandleFunc("GET /slow", a.slow)
	mux.HandleFunc("POST /fail", func(w http.ResponseWriter, r *http.Request) {
		a.setFailing(true)
		fmt.Fprintln(w, "failing")
	})
	mux.HandleFunc("POST /recover", func(w http.ResponseWriter, r *http.Request) {
		a.setFailing(false)
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /metrics", a.metrics)
	if a.writes {
		mux.HandleFunc("POST /write", a.write)
	}
	counted := a.count(mux)
	if a.grpc == nil {
		return counted
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ProtoMajor == 2 && strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc") {
			a.grpc.ServeHTTP(w, r)
			return
		}
		counted.ServeHTTP(w, r)
	})
}

// count counts every answer but those of /metrics.
func (a *app) count(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/metrics" {
			h.ServeHTTP(w, r)
			return
		}
		sw := &statusWriter{ResponseWriter: w, code: http.StatusOK}
		h.ServeHTTP(sw, r)
		a.requests.Add(1)
		if sw.code >= 500 {
			a.errors.Add(1)
		}
	})
}

type statusWriter struct {
	http.ResponseWriter
	code int
}

func (s *statusWriter) WriteHeader(code int) {
	s.code = code
	s.ResponseWriter.WriteHeader(code)
}

func (a *app) metrics(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
	fmt.Fprintf(w, "# HELP sampleapp_requests_total Requests answered (but /metrics).\n# TYPE sampleapp_requests_total counter\nsampleapp_requests_total %d\n", a.requests.Load())
	fmt.Fprintf(w, "# HELP sampleapp_errors_total Requests answered with a status of 500 or above.\n# TYPE sampleapp_errors_total counter\nsampleapp_errors_total %d\n", a.errors.Load())
}

func (a *app) index(w http.ResponseWriter, r *http.Request) {
	if a.failing.Load() || a.erring.Load() { // a broken instance fails its requests, not only its check
		http.Error(w, "failing", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	var b strings.Builder
	fmt.Fprintf(&b, "sampleapp %s\n", a.version)
	fmt.Fprintf(&b, "instance: %s\n", a.instance)
	fmt.Fprintf(&b, "fleet: %s\n", a.fleet)
	fmt.Fprintf(&b, "image: %s\n", a.image)
	conf, err := os.ReadFile(configFile)
	switch {
	case err == nil:
		fmt.Fprintf(&b, "%s:\n%s", configFile, conf)
		if len(conf) > 0 && conf[len(conf)-1] != '\n' {
			b.WriteByte('\n')
		}
	case errors.Is(err, os.ErrNotExist):
		fmt.Fprintf(&b, "%s: (none)\n", configFile)
	default:
		fmt.Fprintf(&b, "%s: unreadable: %v\n", configFile, err)
	}
	io.WriteString(w, b.String())
}

// maxSlow bounds how long /slow holds a request.
const maxSlow = time.Minute

// slow holds the request open for ?ms= milliseconds (at most a minute),
// then answers with the instance id: a long request that a drain must
// wait for, or that a kill would cut.
func (a *app) slow(w http.ResponseWriter, r *http.Request) {
	ms, err := strconv.Atoi(r.URL.Query().Get("ms"))
	if err != nil || ms < 0 || time.Duration(ms)*time.Millisecond > maxSlow {
		http.Error(w, fmt.Sprintf("ms must be a whole number of milliseconds from 0 to %d", maxSlow.Milliseconds()), http.StatusBadRequest)
		return
	}
	if a.failing.Load() || a.erring.Load() {
		http.Error(w, "failing", http.StatusInternalServerError)
		return
	}
	select {
	case <-time.After(time.Duration(ms) * time.Millisecond):
	case <-r.Context().Done():
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	fmt.Fprintf(w, "%s slept %dms\n", a.instance, ms)
}

func (a *app) healthz(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	switch {
	case a.failing.Load():
		w.WriteHeader(http.StatusInternalServerError)
		fmt.Fprintln(w, "failing")
	case a.warming.Load():
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintln(w, "starting")
	default:
		fmt.Fprintln(w, "ok")
	}
}

// maxWrite bounds the body of POST /write.
const maxWrite = 1 << 20

// write writes the request body to the file or device named by ?path=.
func (a *app) write(w http.ResponseWriter, r *http.Request) {
	path := r.URL.Query().Get("path")
	if path == "" {
		http.Error(w, "path is required", http.StatusBadRequest)
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxWrite))
	if err != nil {
		http.Error(w, err.Error(), http.StatusRequestEntityTooLarge)
		return
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE, 0o644)
	if err == nil {
		_, err = f.Write(body)
		if serr := f.Sync(); err == nil {
			err = serr
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	a.logger.Printf("wrote %d bytes to %s (POST /write)", len(body), path)
	fmt.Fprintf(w, "wrote %d bytes to %s\n", len(body), path)
}
