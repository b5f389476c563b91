// Package web is the agent's status page: server-rendered HTML of the
// fleets, their instances (with a small health timeline in SVG) and the
// event log, embedded in the binary with its stylesheet and a few lines of
// JavaScript that refresh the page's live part every two seconds without
// a reload. It is read-only and needs no token, like the API's reads; it
// loads nothing from elsewhere, so it works offline.
package web

import (
	"context"
	"embed"
	"html/template"
	"io/fs"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/immutd/immutd/internal/api"
	"github.com/immutd/immutd/internal/state"
)

// Source is what the page shows: the agent's status and its events (the
// API's backend has both).
type Source interface {
	Status(ctx context.Context) api.Status
	Events(ctx context.Context, after uint64, fleet string, limit int) []state.Event
}

// Bounds of the page's inputs and outputs.
const (
	// DefaultEvents and MaxEvents bound the events shown (?events=N).
	DefaultEvents = 50
	MaxEvents     = 500
	// timelineWindow is the span of an instance's health timeline.
	timelineWindow = 10 * time.Minute
)

//go:embed static
var static embed.FS

//go:embed page.html
var pageHTML string

var (
	page = template.Must(template.New("page").Funcs(funcs).Parse(pageHTML))
	// filterRE is what a fleet or instance filter may be (ids and fleet names).
	filterRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)
)

// Handler serves the page at /ui/, its live part at /ui/live and its
// assets at /ui/static/.
func Handler(src Source) http.Handler {
	mux := http.NewServeMux()
	assets, _ := fs.Sub(static, "static")
	files := http.StripPrefix("/ui/static/", http.FileServer(http.FS(assets)))
	mux.Handle("GET /ui/static/", headers(files))
	mux.Handle("GET /ui/{$}", headers(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		render(w, r, src, "page")
	})))
	mux.Handle("GET /ui/live", headers(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		render(w, r, src, "live")
	})))
	return mux
}

// headers sets what keeps the page to itself: nothing from elsewhere, no
// framing, no sniffing.
func headers(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		w.Header().Set("Referrer-Policy", "no-referrer")
		w.Header().Set("Cache-Control", "no-store")
		h.ServeHTTP(w, r)
	})
}

// query is the page's filters, checked.
type query struct {
	Fleet, Instance string
	Events          int
}

func parseQuery(r *http.Request) (query, string) {
	q := query{Events: DefaultEvents}
	v := r.URL.Query()
	for _, f := range []struct {
		name string
		dst  *string
	}{{"fleet", &q.Fleet}, {"instance", &q.Instance}} {
		s := strings.TrimSpace(v.Get(f.name))
		if s == "" {
			continue
		}
		if !filterRE.MatchString(s) {
			return q, f.name + ": want 1-128 letters, digits, '.', '_' or '-'"
		}
		*f.dst = s
	}
	if s := v.Get("events"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > MaxEvents {
			return q, "events: want a number from 1 to " + strconv.Itoa(MaxEvents)
		}
		q.Events = n
	}
	return q, ""
}

func render(w http.ResponseWriter, r *http.Request, src Source, name string) {
	q, bad := parseQuery(r)
	if bad != "" {
		http.Error(w, bad, http.StatusBadRequest)
		return
	}
	v := build(r.Context(), src, q, time.Now())
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	_ = page.ExecuteTemplate(w, name, v)
}
