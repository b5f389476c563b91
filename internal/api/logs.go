package api

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"strconv"
)

// Bounds of GET /v1/instances/{id}/logs?bytes=N.
const (
	DefaultLogBytes = 64 << 10
	MaxLogBytes     = 1 << 20
)

// LogsBackend is the backend's optional view of instances' output: the
// last max bytes of instance id's, live or kept after it is gone.
type LogsBackend interface {
	Logs(ctx context.Context, id string, max int64) ([]byte, error)
}

// logs serves GET /v1/instances/{id}/logs. An instance's output may hold
// anything the app prints, so it needs the token, like a change.
func (s *Server) logs(w http.ResponseWriter, r *http.Request) {
	lb, ok := s.b.(LogsBackend)
	if !ok {
		writeJSON(w, http.StatusNotFound, Error{Error: "this agent keeps no instance output"})
		return
	}
	max := int64(DefaultLogBytes)
	if v := r.URL.Query().Get("bytes"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 1 || n > MaxLogBytes {
			writeJSON(w, http.StatusBadRequest, Error{Error: "bytes: want a number from 1 to " + strconv.Itoa(MaxLogBytes)})
			return
		}
		max = n
	}
	out, err := lb.Logs(r.Context(), r.PathValue("id"), max)
	if err != nil {
		code := http.StatusInternalServerError
		switch {
		case errors.Is(err, ErrNotFound):
			code = http.StatusNotFound
		case errors.Is(err, ErrBadRequest):
			code = http.StatusBadRequest
		}
		writeJSON(w, code, Error{Error: err.Error()})
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	_, _ = w.Write(out)
}

// Logs fetches the last max bytes of instance id's output.
func (c *Client) Logs(ctx context.Context, id string, max int64) ([]byte, error) {
	var out []byte
	err := c.do(ctx, http.MethodGet, "/v1/instances/"+url.PathEscape(id)+"/logs?bytes="+strconv.FormatInt(max, 10), &out)
	return out, err
}
