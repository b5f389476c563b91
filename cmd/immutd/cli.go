package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"go.uber.org/zap"

	"github.com/immutd/immutd/internal/api"
	"github.com/immutd/immutd/internal/state"
)

func agentErr(err error) zap.Field { return zap.Error(err) }

// defaultAddr is the agent API address the CLI talks to.
func defaultAddr() string {
	if a := os.Getenv("IMMUTD_ADDR"); a != "" {
		return a
	}
	return "127.0.0.1:7979"
}

func cmdStatus(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", defaultAddr(), "agent API address (env IMMUTD_ADDR)")
	asJSON := fs.Bool("json", false, "print the raw JSON")
	fleet := fs.String("fleet", "", "only this fleet")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	st, err := api.NewClient(*addr).Status(ctx)
	if err != nil {
		fmt.Fprintf(stderr, "immutd status: %v\n", err)
		return 1
	}
	if *fleet != "" {
		var keep []api.Fleet
		for _, f := range st.Fleets {
			if f.Name == *fleet {
				keep = append(keep, f)
			}
		}
		st.Fleets = keep
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		_ = enc.Encode(st)
		return 0
	}
	renderStatus(stdout, st, time.Now())
	return 0
}

func renderStatus(w io.Writer, st api.Status, now time.Time) {
	role := "follower"
	if st.IsLeader {
		role = "leader"
	}
	fmt.Fprintf(w, "immutd %s on %s (%s)  term %d  generation %d  applied index %d\n", st.Version, st.Node, role, st.Term, st.Generation, st.AppliedIndex)
	if st.Stale {
		leader := st.Leader
		if leader == "" {
			leader = "none known"
		}
		fmt.Fprintf(w, "stale view: health and drift are known only to the leader (%s)\n", leader)
	}
	switch {
	case st.Config.At.IsZero():
		fmt.Fprintln(w, "fleet files: not read yet")
	case st.Config.OK:
		fmt.Fprintf(w, "fleet files: ok, %d fleets (read %s ago)\n", st.Config.Fleets, ago(now, st.Config.At))
	default:
		fmt.Fprintf(w, "fleet files: REJECTED %s ago; the last good desired state stays in force:\n", ago(now, st.Config.At))
		for _, l := range strings.Split(strings.TrimSpace(st.Config.Error), "\n") {
			fmt.Fprintf(w, "  %s\n", l)
		}
	}
	fmt.Fprintln(w)

	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "FLEET\tPROVIDER\tDESIRED\tHEALTHY\tUP-TO-DATE\tIMAGE\tSTATUS")
	for _, f := range st.Fleets {
		status := "ok"
		switch {
		case f.Unconfigured && f.Draining:
			status = "draining (removed from the fleet files)"
		case f.Unconfigured:
			status = "NOT CONFIGURED: kept running; `immutd fleet drain " + f.Name + "` to remove"
		case len(f.Blocked) > 0:
			var cs []string
			for _, b := range f.Blocked {
				cs = append(cs, b.Cause)
			}
			status = "BLOCKED: " + strings.Join(cs, ", ")
		case f.States["healthy"] < f.Desired:
			status = "converging"
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%s\t%s\n", f.Name, f.Provider, f.Desired, f.States["healthy"], f.UpToDate, shortDigest(f.ImageDigest), status)
	}
	tw.Flush()
	for _, f := range st.Fleets {
		for _, b := range f.Blocked {
			fmt.Fprintf(w, "  %s blocked (%s): %s\n", f.Name, b.Cause, b.Detail)
		}
		if f.ResolveError != "" {
			fmt.Fprintf(w, "  %s image %s not resolved: %s\n", f.Name, f.Image, f.ResolveError)
		}
	}
	fmt.Fprintln(w)

	tw = tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "INSTANCE\tFLEET\tSTATE\tIMAGE\tADDRESS\tAGE\tNOTES")
	for _, f := range st.Fleets {
		for _, in := range f.Instances {
			var notes []string
			if !in.UpToDate && in.State != "unknown" {
				notes = append(notes, "outdated")
			}
			if in.Orphan {
				notes = append(notes, "orphan")
			}
			if in.Intent != "" {
				notes = append(notes, in.Intent)
			}
			age := "-"
			if !in.CreatedAt.IsZero() {
				age = ago(now, in.CreatedAt)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", in.ID, in.Fleet, in.State, shortDigest(in.ImageDigest), in.Address, age, strings.Join(notes, "; "))
			for _, e := range first(in.Evidence, 3) {
				fmt.Fprintf(tw, "\t\t\t\t\t\t  probe: %s\n", e)
			}
			for _, d := range first(in.Drift, 5) {
				fmt.Fprintf(tw, "\t\t\t\t\t\t  drift: %s\n", d)
			}
		}
	}
	tw.Flush()
	if len(st.Events) > 0 {
		fmt.Fprintln(w, "\nRECENT EVENTS")
		renderEvents(w, st.Events)
	}
}

func renderEvents(w io.Writer, evs []state.Event) {
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	for _, e := range evs {
		ev := strings.Join(e.Evidence, "; ")
		if len(ev) > 160 {
			ev = ev[:157] + "..."
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", e.Time.Local().Format("15:04:05"), dash(e.Fleet), dash(e.InstanceID), e.Action, dash(e.Reason), ev)
	}
	tw.Flush()
}

func cmdEvents(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("events", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", defaultAddr(), "agent API address (env IMMUTD_ADDR)")
	fleet := fs.String("fleet", "", "only this fleet")
	n := fs.Int("n", 50, "number of events")
	follow := fs.Bool("follow", false, "keep printing new events")
	asJSON := fs.Bool("json", false, "print JSON lines")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	c := api.NewClient(*addr)
	var after uint64
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		evs, err := c.Events(ctx, after, *fleet, *n)
		cancel()
		if err != nil {
			fmt.Fprintf(stderr, "immutd events: %v\n", err)
			return 1
		}
		if *asJSON {
			enc := json.NewEncoder(stdout)
			for _, e := range evs {
				_ = enc.Encode(e)
			}
		} else {
			renderEvents(stdout, evs)
		}
		if len(evs) > 0 {
			after = evs[len(evs)-1].Seq
		}
		if !*follow {
			return 0
		}
		time.Sleep(time.Second)
	}
}

func cmdFleet(args []string, stdout, stderr io.Writer) int {
	if len(args) < 2 || args[0] != "drain" {
		fmt.Fprintln(stderr, "usage: immutd fleet drain NAME [-addr ADDR]")
		return 2
	}
	name := args[1]
	fs := flag.NewFlagSet("fleet drain", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", defaultAddr(), "agent API address (env IMMUTD_ADDR)")
	if err := fs.Parse(args[2:]); err != nil {
		return 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := api.NewClient(*addr).Drain(ctx, name); err != nil {
		fmt.Fprintf(stderr, "immutd fleet drain: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "fleet %s is draining: its instances are terminated one by one, then the fleet is forgotten\n", name)
	return 0
}

func shortDigest(d string) string {
	d = strings.TrimPrefix(d, "sha256:")
	if len(d) > 12 {
		return d[:12]
	}
	if d == "" {
		return "-"
	}
	return d
}

func ago(now, t time.Time) string {
	d := now.Sub(t).Round(time.Second)
	if d < 0 {
		d = 0
	}
	return d.String()
}

func first(s []string, n int) []string {
	if len(s) > n {
		return append(append([]string(nil), s[:n]...), fmt.Sprintf("... and %d more", len(s)-n))
	}
	return s
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
