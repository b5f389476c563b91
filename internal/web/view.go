package web

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/immutd/immutd/internal/api"
	"github.com/immutd/immutd/internal/state"
)

// view is what the template renders.
type view struct {
	Status  api.Status
	Query   query
	Now     time.Time
	Fleets  []fleetView
	Events  []state.Event
	Names   []string // fleet names, for the filter
	Problem string   // a line on top when the agent has one
}

type fleetView struct {
	api.Fleet
	Healthy   int
	Instances []instanceView
}

type instanceView struct {
	api.Instance
	Timeline timeline
}

// timeline is an instance's health over the last timelineWindow: one
// segment per known state, and a tick per event of the instance.
type timeline struct {
	Width, Height int
	Span          string // what the width stands for
	Segments      []segment
	Ticks         []tick
}

type segment struct {
	X, W  int
	Class string
	Title string
}

type tick struct {
	X     int
	Title string
}

const timelineWidth, timelineHeight = 240, 14

func build(ctx context.Context, src Source, q query, now time.Time) view {
	st := src.Status(ctx)
	v := view{Status: st, Query: q, Now: now}
	// Events newest first; an instance filter is applied here, on the
	// fleet's (or all) events.
	limit := q.Events
	if q.Instance != "" {
		limit = MaxEvents
	}
	evs := src.Events(ctx, 0, q.Fleet, MaxEvents)
	byInstance := map[string][]state.Event{}
	for _, ev := range evs {
		if ev.InstanceID != "" {
			byInstance[ev.InstanceID] = append(byInstance[ev.InstanceID], ev)
		}
	}
	for i := len(evs) - 1; i >= 0 && len(v.Events) < limit; i-- {
		if q.Instance == "" || evs[i].InstanceID == q.Instance {
			v.Events = append(v.Events, evs[i])
		}
	}
	if len(v.Events) > q.Events {
		v.Events = v.Events[:q.Events]
	}
	for _, f := range st.Fleets {
		v.Names = append(v.Names, f.Name)
		if q.Fleet != "" && f.Name != q.Fleet {
			continue
		}
		fv := fleetView{Fleet: f, Healthy: f.States["healthy"]}
		for _, in := range f.Instances {
			if q.Instance != "" && in.ID != q.Instance {
				continue
			}
			fv.Instances = append(fv.Instances, instanceView{Instance: in, Timeline: timelineOf(in, byInstance[in.ID], now)})
		}
		v.Fleets = append(v.Fleets, fv)
	}
	sort.Strings(v.Names)
	switch {
	case !st.Config.OK && st.Config.Error != "":
		v.Problem = "fleet files rejected: " + st.Config.Error
	case st.Leader == "":
		v.Problem = "no leader: this agent's view may be stale"
	case st.Stale:
		v.Problem = "this agent's view is stale"
	}
	return v
}

// stateClass maps an instance state (or a health) to the colour class of
// its timeline segment.
func stateClass(s string) string {
	switch s {
	case "healthy", "passing":
		return "ok"
	case "unhealthy", "never_healthy", "exited", "failing", "gone":
		return "bad"
	case "starting", "launching", "terminating":
		return "wait"
	}
	return "unknown"
}

// timelineOf draws the instance's life over the last timelineWindow (or
// its whole life, at least a minute, when it is younger): before its
// current health started (HealthSince) it was starting or in an earlier
// state; since then it is in its current state. Its events are ticks.
func timelineOf(in api.Instance, evs []state.Event, now time.Time) timeline {
	t := timeline{Width: timelineWidth, Height: timelineHeight, Span: "10 minutes"}
	window := timelineWindow
	if age := now.Sub(in.CreatedAt); !in.CreatedAt.IsZero() && age < window {
		window = max(age, time.Minute)
		t.Span = fmt.Sprintf("%s, its whole life", window.Round(time.Second))
	}
	start := now.Add(-window)
	x := func(at time.Time) int {
		if at.Before(start) {
			return 0
		}
		return int(float64(timelineWidth) * float64(at.Sub(start)) / float64(window))
	}
	born := in.CreatedAt
	if born.IsZero() || born.Before(start) {
		born = start
	}
	since := in.HealthSince
	if since.IsZero() || since.Before(born) {
		since = born
	}
	if bx, sx := x(born), x(since); sx > bx {
		t.Segments = append(t.Segments, segment{X: bx, W: sx - bx, Class: "wait",
			Title: fmt.Sprintf("launched %s; %s since %s", born.UTC().Format(time.TimeOnly), orDash(in.Health), since.UTC().Format(time.TimeOnly))})
	}
	sx := x(since)
	t.Segments = append(t.Segments, segment{X: sx, W: max(timelineWidth-sx, 1), Class: stateClass(in.State),
		Title: fmt.Sprintf("%s since %s", in.State, since.UTC().Format(time.TimeOnly))})
	for _, ev := range evs {
		if ev.Time.Before(start) {
			continue
		}
		t.Ticks = append(t.Ticks, tick{X: x(ev.Time), Title: fmt.Sprintf("%s %s %s", ev.Time.UTC().Format(time.TimeOnly), ev.Action, ev.Reason)})
	}
	return t
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// shortDigest is the first 12 hex digits of a digest.
func shortDigest(d string) string {
	d = strings.TrimPrefix(d, "sha256:")
	if len(d) > 12 {
		return d[:12]
	}
	return d
}

// ago is a short age: 45s, 12m, 3h, 2d.
func ago(now, t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	d := now.Sub(t)
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d.Hours()))
	}
	return fmt.Sprintf("%dd", int(d.Hours()/24))
}

var funcs = map[string]any{
	"short":      shortDigest,
	"ago":        ago,
	"stateClass": stateClass,
	"join":       strings.Join,
	"clock":      func(t time.Time) string { return t.UTC().Format("15:04:05") },
	"plural": func(n int, one, many string) string {
		if n == 1 {
			return one
		}
		return many
	},
}
