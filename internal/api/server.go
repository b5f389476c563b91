package api

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/pprof"
	"strconv"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"

	"github.com/immutd/immutd/internal/state"
)

// Backend is what the server needs from the agent.
type Backend interface {
	// Status is this agent's view; ConsistentStatus is the leader's.
	Status(ctx context.Context) Status
	ConsistentStatus(ctx context.Context) (Status, error)
	Events(ctx context.Context, after uint64, fleet string, limit int) []state.Event
	Drain(ctx context.Context, fleet string) error
	Resolve(ctx context.Context, fleet string) error
	// Retry clears a fleet's launch failures (backoff and cap).
	Retry(ctx context.Context, fleet string) error
	Members(ctx context.Context) ([]Member, error)
	JoinVia(ctx context.Context, addr string) error
	Leave(ctx context.Context) error
	RemoveMember(ctx context.Context, node string) error
	// Plan is the leader's dry run; Explain says why an instance was
	// killed or has not been.
	Plan(ctx context.Context, fleet string) (Plan, error)
	Explain(ctx context.Context, id string) (Explanation, error)
	// Pause and Unpause add and remove operators' pauses; they return the
	// ids of the pauses added or removed.
	Pause(ctx context.Context, req PauseRequest) ([]string, error)
	Unpause(ctx context.Context, req UnpauseRequest) ([]string, error)
	// Rollouts are the fleets' versions and rollouts (of one fleet, or
	// all); RolloutStep pauses, resumes, aborts or reverts one.
	Rollouts(ctx context.Context, fleet string) ([]Rollout, error)
	RolloutStep(ctx context.Context, fleet string, req RolloutRequest) error
	// Ready returns nil when the agent can serve its purpose: raft has a
	// leader and, on the leader, leadership is established.
	Ready() error
	// Token is the bearer token state-changing requests need. It is
	// never empty on a running agent; a request is refused while it is.
	Token() string
	// TokenFile is where the token is kept, for the hint in a refusal.
	TokenFile() string
}

// Errors that map to a status code of their own.
var (
	ErrNotFound    = errors.New("not found")
	ErrBadRequest  = errors.New("bad request")
	ErrUnavailable = errors.New("unavailable")
)

// Server serves the HTTP API.
type Server struct {
	b   Backend
	reg *prometheus.Registry
	log *zap.Logger
}

// New returns a server.
func New(b Backend, reg *prometheus.Registry, log *zap.Logger) *Server {
	return &Server{b: b, reg: reg, log: log}
}

// Handler returns the routes.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.reg, promhttp.HandlerOpts{Registry: s.reg}))
	// Go's profiles, for a slow or hungry agent: they show the agent's
	// internals (and cost CPU while they run), so they need the token.
	mux.HandleFunc("GET /debug/pprof/", s.auth(pprof.Index))
	mux.HandleFunc("GET /debug/pprof/profile", s.auth(pprof.Profile))
	mux.HandleFunc("GET /debug/pprof/trace", s.auth(pprof.Trace))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if err := s.b.Ready(); err != nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = w.Write([]byte(err.Error() + "\n"))
			return
		}
		_, _ = w.Write([]byte("ready\n"))
	})
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		if _, ok := r.URL.Query()["consistent"]; ok {
			st, err := s.b.ConsistentStatus(r.Context())
			if err != nil {
				writeJSON(w, http.StatusServiceUnavailable, Error{Error: "consistent read: " + err.Error()})
				return
			}
			writeJSON(w, http.StatusOK, st)
			return
		}
		writeJSON(w, http.StatusOK, s.b.Status(r.Context()))
	})
	mux.HandleFunc("GET /v1/fleets", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, s.b.Status(r.Context()).Fleets)
	})
	mux.HandleFunc("GET /v1/fleets/{name}", func(w http.ResponseWriter, r *http.Request) {
		for _, f := range s.b.Status(r.Context()).Fleets {
			if f.Name == r.PathValue("name") {
				writeJSON(w, http.StatusOK, f)
				return
			}
		}
		writeJSON(w, http.StatusNotFound, Error{Error: "fleet " + strconv.Quote(r.PathValue("name")) + " not found"})
	})
	mux.HandleFunc("GET /v1/instances", func(w http.ResponseWriter, r *http.Request) {
		fleet := r.URL.Query().Get("fleet")
		out := []Instance{}
		for _, f := range s.b.Status(r.Context()).Fleets {
			if fleet == "" || f.Name == fleet {
				out = append(out, f.Instances...)
			}
		}
		writeJSON(w, http.StatusOK, out)
	})
	mux.HandleFunc("GET /v1/events", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		after, err := parseUint(q.Get("after"))
		if err != nil {
			writeJSON(w, http.StatusBadRequest, Error{Error: "after: " + err.Error()})
			return
		}
		limit, err := parseUint(q.Get("limit"))
		if err != nil {
			writeJSON(w, http.StatusBadRequest, Error{Error: "limit: " + err.Error()})
			return
		}
		if limit == 0 {
			limit = 100
		}
		evs := s.b.Events(r.Context(), after, q.Get("fleet"), int(limit))
		if evs == nil {
			evs = []state.Event{}
		}
		writeJSON(w, http.StatusOK, evs)
	})
	mux.HandleFunc("POST /v1/fleets/{name}/drain", s.auth(func(w http.ResponseWriter, r *http.Request) {
		s.do(w, s.b.Drain(r.Context(), r.PathValue("name")), "draining")
	}))
	mux.HandleFunc("POST /v1/fleets/{name}/resolve", s.auth(func(w http.ResponseWriter, r *http.Request) {
		s.do(w, s.b.Resolve(r.Context(), r.PathValue("name")), "resolved")
	}))
	mux.HandleFunc("POST /v1/fleets/{name}/retry", s.auth(func(w http.ResponseWriter, r *http.Request) {
		s.do(w, s.b.Retry(r.Context(), r.PathValue("name")), "retrying")
	}))
	mux.HandleFunc("GET /v1/plan", func(w http.ResponseWriter, r *http.Request) {
		p, err := s.b.Plan(r.Context(), r.URL.Query().Get("fleet"))
		s.answer(w, p, err)
	})
	mux.HandleFunc("GET /v1/instances/{id}/logs", s.auth(s.logs))
	mux.HandleFunc("GET /v1/instances/{id}/explain", func(w http.ResponseWriter, r *http.Request) {
		e, err := s.b.Explain(r.Context(), r.PathValue("id"))
		s.answer(w, e, err)
	})
	mux.HandleFunc("GET /v1/rollouts", func(w http.ResponseWriter, r *http.Request) {
		rs, err := s.b.Rollouts(r.Context(), r.URL.Query().Get("fleet"))
		s.answer(w, rs, err)
	})
	mux.HandleFunc("POST /v1/fleets/{name}/rollout", s.auth(func(w http.ResponseWriter, r *http.Request) {
		var req RolloutRequest
		if !decodeRequest(w, r, &req) {
			return
		}
		s.answer(w, map[string]string{"result": req.Step}, s.b.RolloutStep(r.Context(), r.PathValue("name"), req))
	}))
	mux.HandleFunc("POST /v1/pause", s.auth(func(w http.ResponseWriter, r *http.Request) {
		var req PauseRequest
		if !decodeRequest(w, r, &req) {
			return
		}
		ids, err := s.b.Pause(r.Context(), req)
		s.answer(w, map[string][]string{"paused": ids}, err)
	}))
	mux.HandleFunc("POST /v1/unpause", s.auth(func(w http.ResponseWriter, r *http.Request) {
		var req UnpauseRequest
		if !decodeRequest(w, r, &req) {
			return
		}
		ids, err := s.b.Unpause(r.Context(), req)
		s.answer(w, map[string][]string{"unpaused": ids}, err)
	}))
	mux.HandleFunc("GET /v1/cluster/members", func(w http.ResponseWriter, r *http.Request) {
		ms, err := s.b.Members(r.Context())
		if err != nil {
			writeJSON(w, http.StatusServiceUnavailable, Error{Error: err.Error()})
			return
		}
		writeJSON(w, http.StatusOK, ms)
	})
	mux.HandleFunc("POST /v1/cluster/join", s.auth(func(w http.ResponseWriter, r *http.Request) {
		s.do(w, s.b.JoinVia(r.Context(), r.URL.Query().Get("addr")), "joined")
	}))
	mux.HandleFunc("POST /v1/cluster/leave", s.auth(func(w http.ResponseWriter, r *http.Request) {
		s.do(w, s.b.Leave(r.Context()), "left")
	}))
	mux.HandleFunc("POST /v1/cluster/remove", s.auth(func(w http.ResponseWriter, r *http.Request) {
		s.do(w, s.b.RemoveMember(r.Context(), r.URL.Query().Get("node")), "removed")
	}))
	s.snapshotRoutes(mux)
	return mux
}

// maxPostBody bounds the body of a state-changing request: most read
// none (their arguments are in the path and query), a pause reads a small
// JSON body.
const maxPostBody = 4 << 10

// decodeRequest decodes a request body of one JSON object with no
// unknown fields; it answers 400 itself and returns false when it cannot.
func decodeRequest(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		writeJSON(w, http.StatusBadRequest, Error{Error: "request body: " + err.Error()})
		return false
	}
	if dec.More() {
		writeJSON(w, http.StatusBadRequest, Error{Error: "request body: data after the JSON object"})
		return false
	}
	return true
}

// answer writes a read's result, or its error: 404 for ErrNotFound, 400
// for ErrBadRequest, 409 for a refusal, 503 when no leader answers.
func (s *Server) answer(w http.ResponseWriter, v any, err error) {
	switch {
	case err == nil:
		writeJSON(w, http.StatusOK, v)
	case errors.Is(err, ErrNotFound):
		writeJSON(w, http.StatusNotFound, Error{Error: err.Error()})
	case errors.Is(err, ErrBadRequest):
		writeJSON(w, http.StatusBadRequest, Error{Error: err.Error()})
	case errors.Is(err, ErrUnavailable):
		writeJSON(w, http.StatusServiceUnavailable, Error{Error: err.Error()})
	default:
		writeJSON(w, http.StatusConflict, Error{Error: err.Error()})
	}
}

// auth requires the bearer token on every request that changes state.
// There is no configuration without a token: an agent whose api block
// names no token file makes one in its data directory.
func (s *Server) auth(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		want := s.b.Token()
		got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if want == "" || !ok || subtle.ConstantTimeCompare([]byte(got), []byte(want)) != 1 {
			s.log.Warn("request refused: missing or wrong bearer token", zap.String("path", clean(r.URL.Path)), zap.String("remote", r.RemoteAddr))
			w.Header().Set("WWW-Authenticate", `Bearer realm="immutd"`)
			writeJSON(w, http.StatusUnauthorized, Error{Error: "this request changes state and needs the API token (Authorization: Bearer ...): pass -token-file " +
				s.b.TokenFile() + " or set IMMUTD_TOKEN_FILE"})
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, maxPostBody)
		h(w, r)
	}
}

// clean bounds a request path before it is logged.
func clean(s string) string {
	if len(s) > 200 {
		s = s[:200]
	}
	return strconv.QuoteToASCII(s)
}

func (s *Server) do(w http.ResponseWriter, err error, result string) {
	if err != nil {
		code := http.StatusConflict
		if errors.Is(err, ErrNotFound) {
			code = http.StatusNotFound
		}
		writeJSON(w, code, Error{Error: err.Error()})
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"result": result})
}

func parseUint(s string) (uint64, error) {
	if strings.TrimSpace(s) == "" {
		return 0, nil
	}
	return strconv.ParseUint(s, 10, 64)
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}
