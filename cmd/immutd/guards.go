package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/user"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/immutd/immutd/internal/api"
)

// setupPause is `immutd pause [-fleet F] [-for D] [-by WHO] REASON...`.
func setupPause(fs *flag.FlagSet) runFunc {
	cf := addClientFlags(fs)
	fleet := fs.String("fleet", "", "pause only this fleet (default: every fleet)")
	dur := fs.Duration("for", 0, "the pause expires by itself after this long (default: never)")
	by := fs.String("by", defaultBy(), "who pauses, for the event log")
	return func(ctx context.Context, w streams, args []string) error {
		r, err := cf.connect()
		if err != nil {
			return err
		}
		ids, err := r.Pause(ctx, api.PauseRequest{Fleet: *fleet, Reason: strings.Join(args, " "), For: *dur, By: *by})
		if err != nil {
			return r.explain(err)
		}
		scope := "every fleet"
		if *fleet != "" {
			scope = "fleet " + clean(*fleet)
		}
		until := ""
		if *dur > 0 {
			until = fmt.Sprintf(" for %s", *dur)
		}
		fmt.Fprintf(w.out, "pause %s holds %s%s: nothing new starts, what is in flight finishes; `immutd unpause %s` ends it\n",
			cleanJoin(ids, ","), scope, until, cleanJoin(ids, ","))
		return nil
	}
}

// setupUnpause is `immutd unpause ID` or `immutd unpause -all [-fleet F]`.
func setupUnpause(fs *flag.FlagSet) runFunc {
	cf := addClientFlags(fs)
	all := fs.Bool("all", false, "remove every pause (of -fleet, when given)")
	fleet := fs.String("fleet", "", "with -all: only the pauses of this fleet")
	by := fs.String("by", defaultBy(), "who unpauses, for the event log")
	return func(ctx context.Context, w streams, args []string) error {
		req := api.UnpauseRequest{All: *all, Fleet: *fleet, By: *by}
		switch {
		case *all && len(args) > 0:
			return usageError("give a pause id or -all, not both")
		case !*all && len(args) != 1:
			return usageError("give the id of the pause to remove (see `immutd status`), or -all")
		case !*all:
			req.ID = args[0]
		}
		r, err := cf.connect()
		if err != nil {
			return err
		}
		ids, err := r.Unpause(ctx, req)
		if err != nil {
			return r.explain(err)
		}
		if len(ids) == 0 {
			fmt.Fprintln(w.out, "no pause was in force")
			return nil
		}
		fmt.Fprintf(w.out, "removed pause %s\n", cleanJoin(ids, ", "))
		return nil
	}
}

// defaultBy names the operator: user@host.
func defaultBy() string {
	name := os.Getenv("USER")
	if u, err := user.Current(); err == nil && u.Username != "" {
		name = u.Username
	}
	host, _ := os.Hostname()
	if host != "" {
		name += "@" + host
	}
	return cutRunes(name, 64)
}

// setupPlan is `immutd plan [FLEET]`.
var setupPlan = setupFleetRead("the plan", (*remote).plan, renderPlan)

func (r *remote) plan(ctx context.Context, fleet string) (api.Plan, error) { return r.Plan(ctx, fleet) }

// setupFleetRead is a read of the agent about one fleet (the FLEET
// argument) or all, printed by render or, with -json, as JSON.
func setupFleetRead[T any](what string, fetch func(*remote, context.Context, string) (T, error), render func(io.Writer, T, time.Time)) func(*flag.FlagSet) runFunc {
	return func(fs *flag.FlagSet) runFunc {
		cf := addClientFlags(fs)
		asJSON := fs.Bool("json", false, "print "+what+" as JSON")
		return func(ctx context.Context, w streams, args []string) error {
			fleet := ""
			if len(args) > 0 {
				fleet = args[0]
			}
			r, err := cf.connect()
			if err != nil {
				return err
			}
			v, err := fetch(r, ctx, fleet)
			if err != nil {
				return r.explain(err)
			}
			if *asJSON {
				return writeIndented(w.out, v)
			}
			render(w.out, v, time.Now())
			return nil
		}
	}
}

func renderPlan(w io.Writer, p api.Plan, now time.Time) {
	c := clean
	fmt.Fprintf(w, "dry run by the leader %s at %s, on what it observed %s ago; nothing is done\n", c(p.Leader), p.At.Local().Format("15:04:05"), ago(now, p.Observed))
	if p.Storm {
		fmt.Fprintln(w, "STORM: every fleet fails at once; nothing is killed for its health")
	}
	for _, ps := range p.Pauses {
		fmt.Fprintf(w, "PAUSED %s\n", pauseLine(ps.ID, ps.Fleet, ps.Reason, ps.By, ps.Until))
	}
	fmt.Fprintln(w)
	if len(p.Actions) == 0 {
		fmt.Fprintln(w, "WOULD DO: nothing")
	} else {
		fmt.Fprintln(w, "WOULD DO")
		tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "  ACTION\tFLEET\tINSTANCE\tREASON\tEVIDENCE")
		for _, a := range p.Actions {
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\n", c(string(a.Kind)), c(a.Fleet), dash(c(a.InstanceID)), c(string(a.Reason)), evidenceOf(a.Evidence))
		}
		tw.Flush()
	}
	if len(p.Held) > 0 {
		fmt.Fprintln(w, "\nHELD BACK")
		tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "  ACTION\tFLEET\tINSTANCE\tREASON\tHELD BY\tWHY")
		for _, h := range p.Held {
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\t%s\n", c(string(h.Kind)), c(h.Fleet), dash(c(h.InstanceID)), c(string(h.Reason)), c(string(h.Guard)), dash(c(h.Detail)))
		}
		tw.Flush()
	}
	for fleet, bs := range p.Blocked {
		for _, b := range bs {
			fmt.Fprintf(w, "  %s blocked (%s): %s\n", c(fleet), c(b.Cause), c(b.Detail))
		}
	}
}

func pauseLine(id, fleet, reason, by string, until time.Time) string {
	scope := "every fleet"
	if fleet != "" {
		scope = "fleet " + clean(fleet)
	}
	s := fmt.Sprintf("%s: %s: %s", clean(id), scope, clean(reason))
	if by != "" {
		s += " (by " + clean(by) + ")"
	}
	if !until.IsZero() {
		s += ", until " + until.Local().Format(time.RFC3339)
	}
	return s
}

func evidenceOf(ev []string) string {
	s := cleanJoin(ev, "; ")
	if len(s) > maxEvidence {
		s = cutRunes(s, maxEvidence-3) + "..."
	}
	return dash(s)
}

// setupExplain is `immutd explain INSTANCE`.
func setupExplain(fs *flag.FlagSet) runFunc {
	cf := addClientFlags(fs)
	asJSON := fs.Bool("json", false, "print the explanation as JSON")
	return func(ctx context.Context, w streams, args []string) error {
		r, err := cf.connect()
		if err != nil {
			return err
		}
		ex, err := r.Explain(ctx, args[0])
		if err != nil {
			return r.explain(err)
		}
		if *asJSON {
			return writeIndented(w.out, ex)
		}
		renderExplanation(w.out, ex)
		return nil
	}
}

func renderExplanation(w io.Writer, ex api.Explanation) {
	c := clean
	fmt.Fprintf(w, "instance %s of fleet %s: %s\n", c(ex.ID), dash(c(ex.Fleet)), c(ex.Verdict))
	if in := ex.Instance; in != nil {
		fmt.Fprintf(w, "  state %s, health %s, image %s, address %s\n", c(in.State), dash(c(in.Health)), shortDigest(in.ImageDigest), dash(c(in.Address)))
		for _, e := range first(in.Evidence, 5) {
			fmt.Fprintf(w, "  probe: %s\n", c(e))
		}
		for _, d := range first(in.Drift, 5) {
			fmt.Fprintf(w, "  drift: %s\n", c(d))
		}
		if len(in.FailingOn)+len(in.HealthyOn) > 0 {
			fmt.Fprintf(w, "  failing on: %s; passing on: %s\n", dash(cleanJoin(in.FailingOn, ", ")), dash(cleanJoin(in.HealthyOn, ", ")))
		}
	}
	for _, h := range ex.Held {
		fmt.Fprintf(w, "  held: %s for %s by %s: %s\n", c(string(h.Kind)), c(string(h.Reason)), c(string(h.Guard)), dash(c(h.Detail)))
	}
	if len(ex.Events) > 0 {
		fmt.Fprintln(w, "\nEVENTS")
		renderEvents(w, ex.Events)
	}
}

func writeIndented(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
