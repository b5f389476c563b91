package main

import (
	"net"
	"path/filepath"

	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/immutd/immutd/internal/pki"

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

func (f clientFlags) client() (*api.Client, error) {
	c := api.NewClient(*f.addr)
	if *f.tokenFile != "" {
		b, err := os.ReadFile(*f.tokenFile)
		if err != nil {
			return nil, err
		}
		c.WithToken(strings.TrimSpace(string(b)))
	}
	if *f.caFile != "" {
		return c.WithCA(*f.caFile)
	}
	return c, nil
}

func cmdStatus(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cf := addClientFlags(fs)
	asJSON := fs.Bool("json", false, "print the raw JSON")
	fleet := fs.String("fleet", "", "only this fleet")
	consistent := fs.Bool("consistent", false, "read through the leader (with health and drift) instead of this agent's replicated copy")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := cf.client()
	if err != nil {
		fmt.Fprintf(stderr, "immutd status: %v\n", err)
		return 1
	}
	st, err := c.Status(ctx, *consistent)
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
	if st.Leader == "" {
		fmt.Fprintln(w, "NO LEADER: the cluster has no quorum; nothing is launched or terminated until a majority of agents is back")
	}
	if st.Stale && st.Leader != "" {
		fmt.Fprintf(w, "stale view (last contact with the leader %s ago, applied index %d): health and drift are known to the leader %s; use -consistent\n",
			st.LastContact, st.AppliedIndex, st.Leader)
	}
	if st.Diverged {
		fmt.Fprintf(w, "this agent's fleet files differ from the committed desired state (last committed from %s), which stays in force\n", st.SourceNode)
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
			if len(in.FailingOn) > 0 && len(in.FailingOn)+len(in.HealthyOn) > 1 {
				fmt.Fprintf(tw, "\t\t\t\t\t\t  failing on: %s; passing on: %s\n", strings.Join(in.FailingOn, ", "), dash(strings.Join(in.HealthyOn, ", ")))
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
	cf := addClientFlags(fs)
	fleet := fs.String("fleet", "", "only this fleet")
	n := fs.Int("n", 50, "number of events")
	follow := fs.Bool("follow", false, "keep printing new events")
	asJSON := fs.Bool("json", false, "print JSON lines")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	c, err := cf.client()
	if err != nil {
		fmt.Fprintf(stderr, "immutd events: %v\n", err)
		return 1
	}
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
	if len(args) < 2 || (args[0] != "drain" && args[0] != "resolve") {
		fmt.Fprintln(stderr, "usage: immutd fleet drain|resolve NAME [-addr ADDR] [-token-file FILE]")
		return 2
	}
	verb, name := args[0], args[1]
	fs := flag.NewFlagSet("fleet "+verb, flag.ContinueOnError)
	fs.SetOutput(stderr)
	cf := addClientFlags(fs)
	if err := fs.Parse(args[2:]); err != nil {
		return 2
	}
	c, err := cf.client()
	if err != nil {
		fmt.Fprintf(stderr, "immutd fleet %s: %v\n", verb, err)
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if verb == "drain" {
		err = c.Drain(ctx, name)
	} else {
		err = c.Resolve(ctx, name)
	}
	if err != nil {
		fmt.Fprintf(stderr, "immutd fleet %s: %v\n", verb, err)
		return 1
	}
	if verb == "drain" {
		fmt.Fprintf(stdout, "fleet %s is draining: its instances are terminated one by one, then the fleet is forgotten\n", name)
	} else {
		fmt.Fprintf(stdout, "fleet %s: image reference pinned again; if it changed, the fleet rolls to it\n", name)
	}
	return 0
}

func cmdCluster(args []string, stdout, stderr io.Writer) int {
	usage := "usage: immutd cluster members | join ADDR | leave | remove NODE  [-addr ADDR] [-token-file FILE]"
	if len(args) < 1 {
		fmt.Fprintln(stderr, usage)
		return 2
	}
	verb, rest := args[0], args[1:]
	var arg string
	if verb == "join" || verb == "remove" {
		if len(rest) < 1 {
			fmt.Fprintln(stderr, usage)
			return 2
		}
		arg, rest = rest[0], rest[1:]
	}
	fs := flag.NewFlagSet("cluster "+verb, flag.ContinueOnError)
	fs.SetOutput(stderr)
	cf := addClientFlags(fs)
	asJSON := fs.Bool("json", false, "print JSON (members)")
	if err := fs.Parse(rest); err != nil {
		return 2
	}
	c, err := cf.client()
	if err != nil {
		fmt.Fprintf(stderr, "immutd cluster: %v\n", err)
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	switch verb {
	case "members":
		ms, err := c.Members(ctx)
		if err != nil {
			fmt.Fprintf(stderr, "immutd cluster members: %v\n", err)
			return 1
		}
		if *asJSON {
			_ = json.NewEncoder(stdout).Encode(ms)
			return 0
		}
		tw := tabwriter.NewWriter(stdout, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "NAME\tID\tADDRESS\tROLE\tHEALTHY\tLAST CONTACT\tLAST INDEX")
		for _, m := range ms {
			role := m.Suffrage
			if m.Leader {
				role = "leader"
			}
			healthy := "-"
			if m.Healthy != nil {
				healthy = fmt.Sprint(*m.Healthy)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%d\n", dash(m.Name), m.ID, m.Address, role, healthy, dash(m.LastContact), m.LastIndex)
		}
		tw.Flush()
	case "join":
		err = c.Join(ctx, arg)
	case "leave":
		err = c.Leave(ctx)
	case "remove":
		err = c.Remove(ctx, arg)
	default:
		fmt.Fprintln(stderr, usage)
		return 2
	}
	if err != nil {
		fmt.Fprintf(stderr, "immutd cluster %s: %v\n", verb, err)
		return 1
	}
	if verb != "members" {
		fmt.Fprintf(stdout, "cluster %s: done\n", verb)
	}
	return 0
}

func cmdTLS(args []string, stdout, stderr io.Writer) int {
	if len(args) < 1 || args[0] != "init" {
		fmt.Fprintln(stderr, "usage: immutd tls init -dir DIR -nodes node-1,node-2,node-3 [-ips 10.0.0.1,...] [-server-name server.immutd] [-days 825]")
		return 2
	}
	fs := flag.NewFlagSet("tls init", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dir := fs.String("dir", "tls", "directory to write ca.pem, ca-key.pem and NODE.pem, NODE-key.pem into")
	nodes := fs.String("nodes", "", "comma-separated agent names (one certificate each)")
	ips := fs.String("ips", "127.0.0.1", "comma-separated IP SANs added to every agent certificate")
	serverName := fs.String("server-name", "server.immutd", "DNS name every agent certificate carries (cluster.tls.server_name)")
	days := fs.Int("days", 825, "validity in days")
	if err := fs.Parse(args[1:]); err != nil {
		return 2
	}
	if *nodes == "" {
		fmt.Fprintln(stderr, "immutd tls init: -nodes is required")
		return 2
	}
	if err := tlsInit(*dir, strings.Split(*nodes, ","), strings.Split(*ips, ","), *serverName, time.Duration(*days)*24*time.Hour); err != nil {
		fmt.Fprintf(stderr, "immutd tls init: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "wrote the cluster CA and %d agent certificates to %s; keep ca-key.pem offline\n", len(strings.Split(*nodes, ",")), *dir)
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
