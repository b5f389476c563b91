package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/immutd/immutd/internal/api"
)

// setupRolloutStatus is `immutd rollout status [FLEET]`.
var setupRolloutStatus = setupFleetRead("the rollouts", (*remote).rollouts, renderRollouts)

func (r *remote) rollouts(ctx context.Context, fleet string) ([]api.Rollout, error) {
	return r.Rollouts(ctx, fleet)
}

func renderRollouts(w io.Writer, rs []api.Rollout, now time.Time) {
	for i, ro := range rs {
		if i > 0 {
			fmt.Fprintln(w)
		}
		renderRollout(w, ro, now)
	}
}

func renderRollout(w io.Writer, ro api.Rollout, now time.Time) {
	c := clean
	state := "no rollout in progress"
	switch r := ro.Rollout; {
	case ro.Revert != nil:
		state = "REVERTED: " + c(ro.Divergence)
	case r != nil && r.Paused:
		state = fmt.Sprintf("rollout to version %d PAUSED (%s): no outdated instance is replaced; `immutd rollout resume %s` goes on", r.Version, c(r.PauseReason), c(ro.Fleet))
	case r != nil && ro.BlueGreen && !r.Switched:
		state = fmt.Sprintf("blue-green rollout to version %d: the new set is made ready next to the old one, without traffic; it switches once all of it is ready", r.Version)
	case r != nil && ro.BlueGreen && r.CompletedAt.IsZero():
		state = fmt.Sprintf("blue-green rollout to version %d switched %s ago: the old set is being drained", r.Version, ago(now, r.SwitchedAt))
	case r != nil && ro.BlueGreen:
		state = fmt.Sprintf("blue-green rollout to version %d switched %s ago; the drained old set is kept for the bake (a revert switches back to it)", r.Version, ago(now, r.SwitchedAt))
	case r != nil && !r.Promoted && ro.Canary > 0:
		state = fmt.Sprintf("canary rollout to version %d: %d canaries next to the old instances, waiting for promotion (promote_after, or `immutd rollout promote %s`)", r.Version, ro.Canary, c(ro.Fleet))
	case r != nil && !r.CompletedAt.IsZero():
		state = fmt.Sprintf("rollout to version %d complete %s ago, baking", r.Version, ago(now, r.CompletedAt))
	case r != nil:
		state = fmt.Sprintf("rolling to version %d since %s ago: %d instances of it available, last progress %s ago", r.Version, ago(now, r.StartedAt), r.Available, ago(now, r.LastProgressAt))
	}
	fmt.Fprintf(w, "fleet %s: file version %d, runs version %d; %s\n", c(ro.Fleet), ro.FileVersion, ro.Target, state)
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  VERSION\tOUTCOME\tIMAGE\tDIGEST\tTEMPLATE\tDESIRED\tROLLED OUT\tDETAIL")
	for _, v := range ro.Versions {
		rolled := "-"
		if !v.RolledOutAt.IsZero() {
			rolled = v.RolledOutAt.Local().Format("2006-01-02 15:04:05")
		}
		fmt.Fprintf(tw, "  %d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", v.N, c(v.Outcome), c(v.Image), shortDigest(v.ImageDigest), c(v.TemplateHash),
			v.At.Local().Format("2006-01-02 15:04:05"), rolled, dash(c(v.Detail)))
	}
	tw.Flush()
	if r := ro.Rollout; r != nil && len(r.Analysis) > 0 {
		fmt.Fprintf(w, "  analysis (last measured %s ago):\n", ago(now, r.MeasuredAt))
		for _, name := range slices.Sorted(maps.Keys(r.Analysis)) {
			t := r.Analysis[name]
			fmt.Fprintf(w, "    %s: %d measured, %d successful, %d failed, %d inconclusive, %d errors; last %s: %s\n", c(name), t.Measured, t.Successful,
				t.Failed, t.Inconclusive, t.Errors, c(string(t.LastPhase)), dash(c(t.Last)))
		}
	}
}

// setupRolloutStep is `immutd rollout pause|resume|abort FLEET` and
// `immutd rollout revert FLEET [VERSION]`.
func setupRolloutStep(step string) func(fs *flag.FlagSet) runFunc {
	return func(fs *flag.FlagSet) runFunc {
		cf := addClientFlags(fs)
		reason := fs.String("reason", "", "why, for the event log")
		by := fs.String("by", defaultBy(), "who, for the event log")
		return func(ctx context.Context, w streams, args []string) error {
			req := api.RolloutRequest{Step: step, Reason: *reason, By: *by}
			if len(args) > 1 {
				n, err := strconv.Atoi(args[1])
				if err != nil || n <= 0 {
					return usageError(fmt.Sprintf("VERSION must be a version number (see `immutd rollout status %s`), got %q", args[0], args[1]))
				}
				req.To = n
			}
			r, err := cf.connect()
			if err != nil {
				return err
			}
			if err := r.RolloutStep(ctx, args[0], req); err != nil {
				return r.explain(err)
			}
			msg := map[string]string{
				"pause":   "rollout paused: no outdated instance is replaced until `immutd rollout resume %s`",
				"promote": "rollout promoted: the old instances of %s are replaced from now on",
				"resume":  "rollout resumed: %s rolls to its file's version",
				"abort":   "rollout aborted: %s goes back to its last stable version",
				"revert":  "reverted: %s goes back to the version asked for; `immutd rollout status` shows the divergence from the file",
				"confirm": "revert of %s confirmed: it goes on until the fleet file names another version",
			}[step]
			fmt.Fprintf(w.out, msg+"\n", clean(args[0]))
			return nil
		}
	}
}
