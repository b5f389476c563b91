package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"text/tabwriter"
	"time"
	"unicode/utf8"

	"go.uber.org/zap"

	"github.com/immutd/immutd/internal/api"
	"github.com/immutd/immutd/internal/pki"
	"github.com/immutd/immutd/internal/secretfile"
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

// clientFlags are the flags of every command that talks to an agent.
type clientFlags struct {
	addr, tokenFile, caFile *string
}

func addClientFlags(fs *flag.FlagSet) clientFlags {
	return clientFlags{
		addr:      fs.String("addr", defaultAddr(), "agent API address or URL (env IMMUTD_ADDR)"),
		tokenFile: fs.String("token-file", os.Getenv("IMMUTD_TOKEN_FILE"), "file with the API bearer token (env IMMUTD_TOKEN_FILE)"),
		caFile:    fs.String("ca-file", os.Getenv("IMMUTD_CA_FILE"), "CA certificate of an https:// API (env IMMUTD_CA_FILE)"),
	}
}

// remote is a client of one agent's API, with what explain needs to turn
// its errors into advice.
type remote struct {
	*api.Client
	addr, tokenFile, caFile string
}

func (f clientFlags) connect() (*remote, error) {
	r := &remote{Client: api.NewClient(*f.addr), addr: *f.addr, tokenFile: *f.tokenFile, caFile: *f.caFile}
	if r.tokenFile != "" {
		tok, err := readToken(r.tokenFile)
		if err != nil {
			return nil, err
		}
		r.WithToken(tok)
	}
	if r.caFile != "" {
		if _, err := r.WithCA(r.caFile); err != nil {
			return nil, fmt.Errorf("-ca-file: %w", err)
		}
	}
	return r, nil
}

// readToken reads the API token file with the agent's rules
// (secretfile.ReadToken). Checking here means a bad file is named as such
// rather than refused as a wrong token by the agent.
func readToken(path string) (string, error) { return secretfile.ReadToken("api token file", path) }

// requestTimeout bounds one request of a command.
const requestTimeout = 20 * time.Second

func setupStatus(fs *flag.FlagSet) runFunc {
	cf := addClientFlags(fs)
	asJSON := fs.Bool("json", false, "print the status as JSON")
	fleet := fs.String("fleet", "", "only this fleet")
	consistent := fs.Bool("consistent", false, "read through the leader (with health and drift) instead of this agent's replicated copy")
	wide := fs.Bool("wide", false, "everything: whole digests, the 20 recent events with their whole evidence (default: fits 120 columns)")
	return func(ctx context.Context, w streams, _ []string) error {
		r, err := cf.connect()
		if err != nil {
			return err
		}
		ctx, cancel := context.WithTimeout(ctx, requestTimeout)
		defer cancel()
		st, err := r.Status(ctx, *consistent)
		if err != nil {
			return r.explain(err)
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
			return writeJSON(w.out, st, true)
		}
		renderStatusWide(w.out, st, time.Now(), *wide)
		return nil
	}
}

// renderStatus prints the status for a human. Every value from the
// agent goes through clean (c) as it is formatted.
func renderStatus(w io.Writer, st api.Status, now time.Time) { renderStatusWide(w, st, now, false) }

// renderStatusWide is renderStatus, with everything when wide.
func renderStatusWide(w io.Writer, st api.Status, now time.Time, wide bool) {
	digest := shortDigest
	if wide {
		digest = func(d string) string { return clean(d) }
	}
	renderHeader(w, st, now)
	fmt.Fprintln(w)
	renderFleetsWith(w, st.Fleets, digest)
	fmt.Fprintln(w)
	renderInstancesWith(w, st.Fleets, now, digest)
	if len(st.Events) > 0 {
		evs := st.Events
		if len(evs) > statusEvents && !wide {
			evs = evs[len(evs)-statusEvents:]
		}
		// The last few, compact; immutd events shows them all, in full.
		fmt.Fprintln(w, "\nRECENT EVENTS")
		renderEventLines(w, evs, wide, true)
	}
}

// statusEvents is how many recent events status shows.
const statusEvents = 10

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

// renderHeader prints the agent's line and what an operator must know
// first: no leader, a data directory raft cannot write, a stale view,
// rejected fleet files.
func renderHeader(w io.Writer, st api.Status, now time.Time) {
	c := clean
	role := "follower"
	if st.IsLeader {
		role = "leader"
	}
	fmt.Fprintf(w, "immutd %s on %s (%s)  pid %d  term %d  generation %d  applied index %d\n", c(st.Version), c(st.Node), role, st.PID, st.Term, st.Generation, st.AppliedIndex)
	if st.Leader == "" {
		if !st.DataDir.At.IsZero() && !st.DataDir.Writable {
			fmt.Fprintln(w, "NO LEADER: this agent cannot write its data directory, so raft cannot persist; nothing is launched or terminated until it can")
		} else {
			fmt.Fprintln(w, "NO LEADER: the cluster has no quorum; nothing is launched or terminated until a majority of agents is back")
		}
	}
	if !st.DataDir.At.IsZero() && !st.DataDir.Writable {
		fmt.Fprintf(w, "DATA DIRECTORY NOT WRITABLE: %s (%s free)\n", c(st.DataDir.Error), humanBytes(st.DataDir.Free))
	}
	if st.Stale && st.Leader != "" {
		fmt.Fprintf(w, "stale view (last contact with the leader %s ago, applied index %d): health and drift are known to the leader %s; use -consistent\n",
			c(st.LastContact), st.AppliedIndex, c(st.Leader))
	}
	if st.Diverged {
		fmt.Fprintf(w, "this agent's fleet files differ from the committed desired state (last committed from %s), which stays in force\n", c(st.SourceNode))
	}
	if st.Storm {
		fmt.Fprintln(w, "STORM: every fleet fails at once, an observer problem more likely than broken instances; nothing is killed for its health")
	}
	for _, p := range st.Pauses {
		fmt.Fprintf(w, "PAUSED %s\n", pauseLine(p.ID, p.Fleet, p.Reason, p.By, p.Until))
	}
	switch {
	case st.Config.At.IsZero():
		fmt.Fprintln(w, "fleet files: not read yet")
	case st.Config.OK:
		fmt.Fprintf(w, "fleet files: ok, %d %s (read %s ago)\n", st.Config.Fleets, plural(st.Config.Fleets, "fleet", "fleets"), ago(now, st.Config.At))
	default:
		fmt.Fprintf(w, "fleet files: REJECTED %s ago; the last good desired state stays in force:\n", ago(now, st.Config.At))
		// One problem per line: split before cleaning, which escapes newlines.
		for _, l := range strings.Split(strings.TrimSpace(st.Config.Error), "\n") {
			fmt.Fprintf(w, "  %s\n", c(l))
		}
	}
}

// renderFleets prints one line per fleet, then why any fleet is blocked.
func renderFleets(w io.Writer, fleets []api.Fleet) { renderFleetsWith(w, fleets, shortDigest) }

// renderFleetsWith is renderFleets with digests shown by digest.
func renderFleetsWith(w io.Writer, fleets []api.Fleet, digest func(string) string) {
	c := clean
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "FLEET\tPROVIDER\tDESIRED\tHEALTHY\tUP-TO-DATE\tIMAGE\tSTATUS")
	for _, f := range fleets {
		status := "ok"
		switch {
		case f.Unconfigured && f.Draining:
			status = "draining (removed from the fleet files)"
		case f.Unconfigured:
			status = "NOT CONFIGURED: kept running; `immutd fleet drain " + c(f.Name) + "` to remove"
		case f.Reverted != "":
			status = fmt.Sprintf("REVERTED to version %d (file: %d)", f.Version, f.FileVersion)
		case len(f.Blocked) > 0:
			var cs []string
			for _, b := range f.Blocked {
				cs = append(cs, c(b.Cause))
			}
			status = "BLOCKED: " + strings.Join(cs, ", ")
		case f.Rollout != "":
			status = "rolling " + c(f.Rollout)
		case f.States["healthy"] < f.Desired:
			status = "converging"
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%s\t%s\n", c(f.Name), c(f.Provider), f.Desired, f.States["healthy"], f.UpToDate, digest(f.ImageDigest), status)
	}
	tw.Flush()
	for _, f := range fleets {
		if f.Reverted != "" {
			fmt.Fprintf(w, "  %s reverted: %s\n", c(f.Name), c(f.Reverted))
		}
		for _, b := range f.Blocked {
			fmt.Fprintf(w, "  %s blocked (%s): %s\n", c(f.Name), c(b.Cause), c(b.Detail))
		}
		if f.ResolveError != "" {
			fmt.Fprintf(w, "  %s image %s not resolved: %s\n", c(f.Name), c(f.Image), c(f.ResolveError))
		}
		if f.LastLaunchError != "" {
			fmt.Fprintf(w, "  %s last launch error: %s\n", c(f.Name), c(f.LastLaunchError))
		}
	}
}

// renderInstances prints one line per instance with its evidence below.
func renderInstances(w io.Writer, fleets []api.Fleet, now time.Time) {
	renderInstancesWith(w, fleets, now, shortDigest)
}

// renderInstancesWith is renderInstances with image digests shown by digest.
func renderInstancesWith(w io.Writer, fleets []api.Fleet, now time.Time, digest func(string) string) {
	c := clean
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	// REF is the provider's handle: a local instance's pid (kill -9 it to
	// try immutd), a container id, a VM's QEMU pid and accelerator.
	fmt.Fprintln(tw, "INSTANCE\tFLEET\tSTATE\tIMAGE\tADDRESS\tREF\tAGE\tNOTES")
	for _, f := range fleets {
		for _, in := range f.Instances {
			var notes []string
			if !in.UpToDate && in.State != "unknown" {
				notes = append(notes, "outdated")
			}
			if in.Orphan {
				notes = append(notes, "orphan")
			}
			if in.Flapping {
				notes = append(notes, "FLAPPING")
			}
			if in.Recovering {
				notes = append(notes, "recovering (healthy_delay)")
			}
			if in.State == "healthy" && len(in.FailingOn) > 0 {
				// Probes fail, but not yet enough of them for a verdict.
				notes = append(notes, "PROBES FAILING on "+cleanJoin(in.FailingOn, ", ")+" (no verdict yet)")
			}
			switch {
			case in.Traffic == "draining" && in.TrafficConnections > 0:
				notes = append(notes, fmt.Sprintf("traffic: draining, %d connections left", in.TrafficConnections))
			case in.Traffic != "":
				notes = append(notes, "traffic: "+c(in.Traffic))
			}
			if in.Intent != "" {
				notes = append(notes, c(in.Intent))
			}
			age := "-"
			if !in.CreatedAt.IsZero() {
				age = ago(now, in.CreatedAt)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", c(in.ID), c(in.Fleet), c(in.State), digest(in.ImageDigest), c(in.Address),
				shortDigest(in.ProviderRef), age, strings.Join(notes, "; "))
			for _, e := range first(in.Evidence, 3) {
				fmt.Fprintf(tw, "\t\t\t\t\t\t\t  probe: %s\n", c(e))
			}
			for _, d := range first(in.Drift, 5) {
				fmt.Fprintf(tw, "\t\t\t\t\t\t\t  drift: %s\n", c(d))
			}
			if len(in.FailingOn) > 0 && len(in.FailingOn)+len(in.HealthyOn) > 1 {
				fmt.Fprintf(tw, "\t\t\t\t\t\t\t  failing on: %s; passing on: %s\n", cleanJoin(in.FailingOn, ", "), dash(cleanJoin(in.HealthyOn, ", ")))
			}
		}
	}
	tw.Flush()
}

// maxEvidence bounds the evidence shown on an event's line.
const maxEvidence = 60

// longDigest is a sha256 digest, of which a compact line shows 12 digits.
var longDigest = regexp.MustCompile(`sha256:([0-9a-f]{12})[0-9a-f]{52}`)

// renderEvents prints events compactly, a line each that fits a terminal
// of 120 columns: digests shortened, evidence cut.
func renderEvents(w io.Writer, evs []state.Event) { renderEventLines(w, evs, false, true) }

// renderEventLines prints events, with a header line or not, compact or
// (full) with the whole evidence.
func renderEventLines(w io.Writer, evs []state.Event, full, header bool) {
	out := w
	var buf bytes.Buffer
	if !full {
		out = &buf
	}
	tw := tabwriter.NewWriter(out, 2, 4, 2, ' ', 0)
	if header {
		fmt.Fprintln(tw, "TIME\tFLEET\tINSTANCE\tACTION\tREASON\tEVIDENCE")
	}
	for _, e := range evs {
		// Cleaned before it is cut, so that the cut neither splits a
		// character nor hides an escape's start.
		ev := cleanJoin(e.Evidence, "; ")
		if !full {
			ev = longDigest.ReplaceAllString(ev, "sha256:$1")
			if len(ev) > maxEvidence {
				ev = cutRunes(ev, maxEvidence-3) + "..."
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", e.Time.Local().Format("15:04:05"), dash(clean(e.Fleet)), dash(clean(e.InstanceID)), clean(string(e.Action)), dash(clean(e.Reason)), ev)
	}
	tw.Flush()
	if full {
		return
	}
	// Compact: every line within a terminal of 120 columns, the evidence
	// (the last column) cut where it does not fit.
	for _, line := range strings.SplitAfter(buf.String(), "\n") {
		body, nl := strings.CutSuffix(line, "\n")
		if utf8.RuneCountInString(body) > compactWidth {
			r := []rune(body)
			body = string(r[:compactWidth-3]) + "..."
		}
		if body != "" || nl {
			fmt.Fprint(w, body)
			if nl {
				fmt.Fprintln(w)
			}
		}
	}
}

// compactWidth is the width compact event lines fit in.
const compactWidth = 120

// eventJSON is an event as events -json prints it: "evidence" always
// there, [] when there is none.
func eventJSON(e state.Event) any {
	ev := e.Evidence
	if ev == nil {
		ev = []string{}
	}
	return struct {
		state.Event
		Evidence []string `json:"evidence"`
	}{e, ev}
}

// followInterval is how often events -follow asks for new events.
var followInterval = time.Second

func setupEvents(fs *flag.FlagSet) runFunc {
	cf := addClientFlags(fs)
	fleet := fs.String("fleet", "", "only this fleet")
	n := fs.Int("n", 50, "number of events")
	follow := fs.Bool("follow", false, "keep printing new events until interrupted")
	fs.BoolVar(follow, "f", false, "the same as -follow")
	asJSON := fs.Bool("json", false, "print one JSON object per event and line")
	return func(ctx context.Context, w streams, _ []string) error {
		r, err := cf.connect()
		if err != nil {
			return err
		}
		var after uint64
		for {
			rctx, cancel := context.WithTimeout(ctx, requestTimeout)
			evs, err := r.Events(rctx, after, *fleet, *n)
			cancel()
			if *follow && ctx.Err() != nil {
				return nil // interrupted: the way -follow ends
			}
			if err != nil {
				return r.explain(err)
			}
			if *asJSON {
				for _, e := range evs {
					if err := writeJSON(w.out, eventJSON(e), false); err != nil {
						return err
					}
				}
			} else if len(evs) > 0 {
				// Only the first batch of -follow gets the header.
				renderEventLines(w.out, evs, true, after == 0)
			}
			if len(evs) > 0 {
				after = evs[len(evs)-1].Seq
			}
			if !*follow {
				return nil
			}
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(followInterval):
			}
		}
	}
}

// setupFleet is fleet drain and fleet resolve.
func setupFleet(verb string) func(fs *flag.FlagSet) runFunc {
	return func(fs *flag.FlagSet) runFunc {
		cf := addClientFlags(fs)
		return func(ctx context.Context, w streams, args []string) error {
			name := args[0]
			r, err := cf.connect()
			if err != nil {
				return err
			}
			// Draining waits for the agent to commit the change.
			ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
			defer cancel()
			switch verb {
			case "drain":
				err = r.Drain(ctx, name)
			case "retry":
				err = r.Retry(ctx, name)
			default:
				err = r.Resolve(ctx, name)
			}
			if err != nil {
				return r.explain(err)
			}
			switch verb {
			case "drain":
				fmt.Fprintf(w.out, "fleet %s is draining: its instances are terminated one by one, then the fleet is forgotten\n", clean(name))
			case "retry":
				fmt.Fprintf(w.out, "fleet %s: launch failures cleared; launches start again without backoff\n", clean(name))
			default:
				fmt.Fprintf(w.out, "fleet %s: image reference pinned again; if it changed, the fleet rolls to it\n", clean(name))
			}
			return nil
		}
	}
}

func setupMembers(fs *flag.FlagSet) runFunc {
	cf := addClientFlags(fs)
	asJSON := fs.Bool("json", false, "print the members as JSON")
	return func(ctx context.Context, w streams, _ []string) error {
		r, err := cf.connect()
		if err != nil {
			return err
		}
		ctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		ms, err := r.Members(ctx)
		if err != nil {
			return r.explain(err)
		}
		if *asJSON {
			return writeJSON(w.out, ms, false)
		}
		tw := tabwriter.NewWriter(w.out, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "NAME\tID\tADDRESS\tROLE\tHEALTHY\tLAST CONTACT\tLAST INDEX")
		for _, m := range ms {
			role := clean(m.Suffrage)
			if m.Leader {
				role = "leader"
			}
			healthy := "-"
			if m.Healthy != nil {
				healthy = fmt.Sprint(*m.Healthy)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%d\n", dash(clean(m.Name)), clean(m.ID), clean(m.Address), role, healthy, dash(clean(m.LastContact)), m.LastIndex)
		}
		return tw.Flush()
	}
}

// setupMembership is cluster join, leave and remove.
func setupMembership(verb string) func(fs *flag.FlagSet) runFunc {
	return func(fs *flag.FlagSet) runFunc {
		cf := addClientFlags(fs)
		return func(ctx context.Context, w streams, args []string) error {
			r, err := cf.connect()
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(ctx, time.Minute)
			defer cancel()
			switch verb {
			case "join":
				err = r.Join(ctx, args[0])
			case "leave":
				err = r.Leave(ctx)
			case "remove":
				err = r.Remove(ctx, args[0])
			}
			if err != nil {
				return r.explain(err)
			}
			fmt.Fprintf(w.out, "cluster %s: done\n", verb)
			return nil
		}
	}
}

func setupTLSInit(fs *flag.FlagSet) runFunc {
	dir := fs.String("dir", "tls", "directory to write ca.pem, ca-key.pem and NODE.pem, NODE-key.pem into")
	nodes := fs.String("nodes", "", "comma-separated agent names, one certificate each (required)")
	ips := fs.String("ips", "127.0.0.1", "comma-separated IP SANs added to every agent certificate")
	serverName := fs.String("server-name", "server.immutd", "DNS name every agent certificate carries (cluster.tls.server_name)")
	days := fs.Int("days", 825, "validity in days")
	return func(_ context.Context, w streams, _ []string) error {
		if *nodes == "" {
			return usageError("-nodes is required")
		}
		names := strings.Split(*nodes, ",")
		if err := tlsInit(*dir, names, strings.Split(*ips, ","), *serverName, time.Duration(*days)*24*time.Hour); err != nil {
			return err
		}
		fmt.Fprintf(w.out, "wrote the cluster CA and %d agent certificates to %s; keep ca-key.pem offline\n", len(names), clean(*dir))
		return nil
	}
}

// cleanJoin cleans each of ss and joins them with sep.
func cleanJoin(ss []string, sep string) string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = clean(s)
	}
	return strings.Join(out, sep)
}

// cutRunes cuts s to at most n bytes without splitting a character.
func cutRunes(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

// shortDigest is the start of an image digest, cleaned.
func shortDigest(d string) string {
	d = strings.TrimPrefix(d, "sha256:")
	if d == "" {
		return "-"
	}
	return clean(cutRunes(d, 12))
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

// tlsInit creates a CA (unless dir already holds one) and a certificate
// per node carrying the cluster's server name.
func tlsInit(dir string, nodes, ips []string, serverName string, validity time.Duration) error {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return err
	}
	caCert, caKey := filepath.Join(dir, "ca.pem"), filepath.Join(dir, "ca-key.pem")
	cert, err := os.ReadFile(caCert)
	var key []byte
	if err == nil {
		if key, err = os.ReadFile(caKey); err != nil {
			return fmt.Errorf("%s exists but %s cannot be read: %w", caCert, caKey, err)
		}
	} else {
		if cert, key, err = pki.NewCA("immutd cluster CA", validity); err != nil {
			return err
		}
		if err := pki.WriteFiles(dir, "ca", cert, key); err != nil {
			return err
		}
	}
	var ipSANs []net.IP
	for _, s := range ips {
		if s = strings.TrimSpace(s); s == "" {
			continue
		}
		ip := net.ParseIP(s)
		if ip == nil {
			return fmt.Errorf("-ips: %q is not an IP address", s)
		}
		ipSANs = append(ipSANs, ip)
	}
	for _, n := range nodes {
		n = strings.TrimSpace(n)
		if n == "" {
			continue
		}
		c, k, err := pki.NewCert(cert, key, n, []string{serverName, n}, ipSANs, validity)
		if err != nil {
			return err
		}
		if err := pki.WriteFiles(dir, n, c, k); err != nil {
			return err
		}
	}
	return nil
}

// humanBytes formats a byte count in binary units.
func humanBytes(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
