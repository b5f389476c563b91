// Command immutd keeps fleets of machines immutable: it replaces any
// instance that drifts from its golden image or fails its health checks.
//
//	immutd agent [flags]                 run an agent
//	immutd validate [DIR] [flags]        check fleet files (and with -config, the agent file)
//	immutd status [flags]                show fleets, instances and recent events
//	immutd events [flags]                show the event log
//	immutd fleet drain|resolve NAME [flags]
//	immutd cluster members|leave [flags]
//	immutd cluster join ADDR [flags]
//	immutd cluster remove NODE [flags]
//	immutd snapshot save|restore FILE [flags]
//	immutd tls init -nodes a,b,c [flags]
//	immutd version
//	immutd help [COMMAND]
//
// Flags may come before or after the arguments; "--" ends the flags.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"slices"
	"strings"
	"syscall"

	"github.com/immutd/immutd/internal/agent"
)

// A command is one subcommand. Every subcommand is declared the same way
// so that its help text, its argument checks and its flag parsing come
// from one place and cannot disagree.
type command struct {
	// name is how it is called: "status", "fleet drain".
	name string
	// args is what follows the name in the synopsis: the positional
	// arguments ("NAME", "[DIR]") or a required flag.
	args string
	// minArgs and maxArgs bound the number of positional arguments.
	minArgs, maxArgs int
	// summary is its line in the list of commands.
	summary string
	// about is the paragraph of its help text.
	about string
	// setup declares its flags on fs and returns the function that runs
	// it, once the flags are parsed, with its positional arguments.
	setup func(fs *flag.FlagSet) runFunc
}

// runFunc runs a command. A plain error is printed as
// "immutd COMMAND: ERROR" and exits 1; see usageError and errReported.
type runFunc func(ctx context.Context, w streams, args []string) error

// streams are where a command writes. Both escape control characters.
type streams struct{ out, err io.Writer }

// usageError is a mistake in how a command was called: it is printed
// with the command's synopsis and exits 2.
type usageError string

func (e usageError) Error() string { return string(e) }

// errReported means the command printed its errors itself; it exits 1.
var errReported = errors.New("reported")

// commands are all subcommands, in the order the usage text lists them.
var commands = []*command{
	{
		name: "agent", summary: "run an agent (the README has the configuration reference)",
		about: `Run an immutd agent with the agent configuration file. SIGHUP reloads
the agent file; SIGTERM or SIGINT stops the agent, and the instances it
made keep running.`,
		setup: setupAgent,
	},
	{
		name: "validate", args: "[DIR]", maxArgs: 1,
		summary: "check fleet files (and the agent file with -config); exit 0 when valid, 1 otherwise",
		about: `Check the fleet files of DIR as the agent would, including each local
fleet's image bundle. With -config FILE, check the agent file too, print
its warnings, and check its fleets_dir when no DIR is given. Every problem
is printed as FILE:LINE:COLUMN: FIELD: MESSAGE. The exit status is 0 when
everything is valid, 1 otherwise, and 2 for a usage error.`,
		setup: setupValidate,
	},
	{
		name: "status", summary: "show fleets, instances, health, drift, blocked reasons and recent events",
		about: `Show the agent's view of every fleet: desired and healthy instances,
drift, what blocks remediation, the instances, and the recent events. A
follower answers from its replicated copy; -consistent reads through the
leader, which knows health and drift.`,
		setup: setupStatus,
	},
	{
		name: "events", summary: "show the event log: why every instance was launched or killed",
		about: `Show the event log: every launch and kill with its reason and evidence.
With -follow, keep printing new events until interrupted.`,
		setup: setupEvents,
	},
	{
		name: "fleet drain", args: "NAME", minArgs: 1, maxArgs: 1,
		summary: "terminate the instances of a fleet removed from the fleet files",
		about: `Terminate the instances of fleet NAME one by one, then forget the fleet.
The agent refuses this for a fleet that is still in the fleet files.`,
		setup: setupFleet("drain"),
	},
	{
		name: "fleet resolve", args: "NAME", minArgs: 1, maxArgs: 1,
		summary: "pin the fleet's image reference again (after a tag moved)",
		about: `Resolve fleet NAME's image reference again and pin the result; if the
content changed, the fleet rolls to it.`,
		setup: setupFleet("resolve"),
	},
	{
		name: "fleet retry", args: "NAME", minArgs: 1, maxArgs: 1,
		summary: "clear the fleet's launch failures: launches start again without backoff",
		about: `Forget the consecutive launch failures of fleet NAME (after fixing what
made its instances fail): its launch backoff and remediation.max_launch_failures
cap start afresh.`,
		setup: setupFleet("retry"),
	},
	{
		name: "rollout status", args: "[FLEET]", maxArgs: 1,
		summary: "the fleets' versions, their rollouts and how they ended, and reverts",
		about: `Show each fleet's kept versions (image, digest, launch template, when it
became desired and rolled out, how its rollout ended), the rollout in
progress, and a revert in force with how the fleet differs from its file.`,
		setup: setupRolloutStatus,
	},
	{
		name: "rollout pause", args: "FLEET", minArgs: 1, maxArgs: 1,
		summary: "pause a fleet's rollout: no outdated instance is replaced (healing goes on)",
		about: `Pause the rollout in progress of FLEET: instances of the old version
are no longer replaced; failing instances still are.`,
		setup: setupRolloutStep("pause"),
	},
	{
		name: "rollout resume", args: "FLEET", minArgs: 1, maxArgs: 1,
		summary: "resume a paused or failed rollout, or end a revert: roll to the file's version",
		about: `Resume the paused (or failed) rollout of FLEET, or end a revert in force:
the fleet rolls to the version its file names, with a fresh progress
deadline.`,
		setup: setupRolloutStep("resume"),
	},
	{
		name: "rollout promote", args: "FLEET", minArgs: 1, maxArgs: 1,
		summary: "promote a canary rollout: the old instances are replaced from now on",
		about: `Promote the canary rollout of FLEET (strategy = "canary"): its canaries
proved themselves, and the old instances are replaced, surge-first, from
now on. Without promote_after this is the only way a canary rollout goes
on.`,
		setup: setupRolloutStep("promote"),
	},
	{
		name: "rollout abort", args: "FLEET", minArgs: 1, maxArgs: 1,
		summary: "abort the rollout in progress: back to the last stable version",
		about: `Abort the rollout in progress of FLEET: it goes back to its last stable
version (a revert), fast: no canary, no analysis.`,
		setup: setupRolloutStep("abort"),
	},
	{
		name: "rollout revert", args: "FLEET [VERSION]", minArgs: 1, maxArgs: 2,
		summary: "run an older stable version (the last one, or VERSION), also after a rollout completed",
		about: `Make FLEET run VERSION (default: its last stable version other than the
one it runs) instead of its file's version, fast: instances of other
versions are replaced within the usual bounds. Only a stable version (its
rollout completed and baked healthy) can be reverted to. The fleet file
stays the source of truth: the revert ends when the file names another
version, or with immutd rollout resume.`,
		setup: setupRolloutStep("revert"),
	},
	{
		name: "rollout confirm", args: "FLEET", minArgs: 1, maxArgs: 1,
		summary: "confirm a revert in force: keep it, and stop reporting it as a divergence",
		about: `Confirm the revert in force of FLEET: it goes on (until the fleet file
names another version, or immutd rollout resume), and it is no longer
reported as an unacknowledged divergence (immutd_fleet_reverted drops to
0, status says who confirmed it).`,
		setup: setupRolloutStep("confirm"),
	},
	{
		name: "plan", args: "[FLEET]", maxArgs: 1,
		summary: "dry run: what the leader would do now, and what holds the rest back",
		about: `Ask the leader to plan on the state as it is and on what its last pass
observed, without acting: every launch, terminate, drain and admission it
would do with its reason and evidence, and every one a guard holds back
(pause, kill rate, storm, breaker, report mode, traffic) with the guard.`,
		setup: setupPlan,
	},
	{
		name: "explain", args: "INSTANCE", minArgs: 1, maxArgs: 1,
		summary: "why an instance was killed, or why it has not been",
		about: `Explain instance INSTANCE: what the leader sees of it, what the next
pass would do with it or which guard holds that back, and every event
about it that the event log still holds.`,
		setup: setupExplain,
	},
	{
		name: "logs", args: "INSTANCE", minArgs: 1, maxArgs: 1,
		summary: "show the last output of an instance, also after it is gone",
		about: `Show the last output (stdout and stderr; a VM's serial console) of
instance INSTANCE: live while it runs, and for 7 days after it was
terminated, the last 256 KiB of it, kept by the provider (at most 500
instances'). Needs the API token: an app's output may hold anything.
In a cluster ask the leader, whose providers ran the instance.`,
		setup: setupLogs,
	},
	{
		name: "pause", args: "REASON...", minArgs: 1, maxArgs: 64,
		summary: "pause every fleet (or one, with -fleet): nothing new starts",
		about: `Pause every fleet, or the fleet named by -fleet, for REASON: nothing new
is launched, terminated, drained or admitted, and what is in flight
finishes. Pauses stack: a fleet moves again once every pause on it is
removed (immutd unpause) or expired (-for).`,
		setup: setupPause,
	},
	{
		name: "unpause", args: "ID | -all", maxArgs: 1,
		summary: "remove a pause by its id (see status), or every pause with -all",
		about:   `Remove the pause ID, or with -all every pause (of -fleet, when given).`,
		setup:   setupUnpause,
	},
	{
		name: "cluster members", summary: "list the servers of the cluster with their health",
		about: `List the servers of the cluster: name, id, cluster address, role,
health and replication progress.`,
		setup: setupMembers,
	},
	{
		name: "cluster join", args: "ADDR", minArgs: 1, maxArgs: 1,
		summary: "make the agent join a cluster through a peer's cluster address",
		about: `Make the agent at -addr join the cluster of the peer whose cluster
address (not API address) is ADDR.`,
		setup: setupMembership("join"),
	},
	{
		name: "cluster leave", summary: "remove the agent from the cluster, then stop it",
		about: `Remove the agent at -addr from the cluster; it stops afterwards.`,
		setup: setupMembership("leave"),
	},
	{
		name: "cluster remove", args: "NODE", minArgs: 1, maxArgs: 1,
		summary: "remove a server (by id or name) from the cluster",
		about: `Remove the server NODE, given by id or name, from the cluster, for
example a machine that is gone for good.`,
		setup: setupMembership("remove"),
	},
	snapshotSaveCommand,
	snapshotRestoreCommand,
	{
		name: "tls init", args: "-nodes NAME,...", summary: "create a CA and one certificate per agent for cluster mTLS",
		about: `Create a cluster CA in -dir (unless it holds one already) and one
certificate per agent named in -nodes, for the cluster's mutual TLS.
Keep ca-key.pem offline.`,
		setup: setupTLSInit,
	},
	{
		name: "version", summary: "print the version",
		about: `Print immutd's version, revision and Go version.`,
		setup: func(*flag.FlagSet) runFunc {
			return func(_ context.Context, w streams, _ []string) error {
				fmt.Fprintf(w.out, "immutd %s (revision %s, %s)\n", clean(agent.Version), clean(agent.Revision), runtime.Version())
				return nil
			}
		},
	},
}

const clientHelp = `Commands that talk to an agent take -addr (default $IMMUTD_ADDR or
127.0.0.1:7979), -token-file (default $IMMUTD_TOKEN_FILE) for the API
token, and -ca-file (default $IMMUTD_CA_FILE) for an https:// address.
`

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

// run runs the command line args and returns the exit status: 0 on
// success, 1 when the command failed, 2 when it was called wrongly.
func run(args []string, stdout, stderr io.Writer) int {
	out, errw := newEscaper(stdout), newEscaper(stderr)
	defer out.Flush()
	defer errw.Flush()
	w := streams{out: out, err: errw}

	// SIGINT and SIGTERM cancel ctx: requests in flight give up, events
	// -follow stops, the agent shuts down.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	if len(args) == 0 {
		fmt.Fprint(w.err, usage())
		return 2
	}
	switch args[0] {
	case "help", "-h", "-help", "--help":
		return help(w, args[1:])
	case "-version", "--version":
		args = []string{"version"}
	}
	cmd, rest := lookup(args)
	if cmd == nil {
		return unknown(w, args)
	}
	return cmd.run(ctx, w, rest)
}

// lookup finds the command args call and returns its arguments.
func lookup(args []string) (*command, []string) {
	for _, c := range commands {
		words := strings.Fields(c.name)
		if len(args) >= len(words) && slices.Equal(args[:len(words)], words) {
			return c, args[len(words):]
		}
	}
	return nil, nil
}

// group returns the commands of a group such as "fleet".
func group(name string) []*command {
	var cs []*command
	for _, c := range commands {
		if first, _, ok := strings.Cut(c.name, " "); ok && first == name {
			cs = append(cs, c)
		}
	}
	return cs
}

// unknown reports a command line that names no command. (%q shows
// control characters as escapes, as strconv.Quote does.) A group alone
// ("immutd fleet") or asked for help lists the group's commands.
func unknown(w streams, args []string) int {
	if cs := group(args[0]); len(cs) > 0 {
		if len(args) > 1 && isHelp(args[1]) {
			fmt.Fprint(w.out, groupUsage(args[0], cs))
			return 0
		}
		if len(args) == 1 {
			fmt.Fprintf(w.err, "immutd %s: missing subcommand\n%s", args[0], groupUsage(args[0], cs))
		} else {
			fmt.Fprintf(w.err, "immutd %s: unknown subcommand %q\n%s", args[0], args[1], groupUsage(args[0], cs))
		}
		return 2
	}
	fmt.Fprintf(w.err, "immutd: unknown command %q\n\n%s", args[0], usage())
	return 2
}

// help is `immutd help [COMMAND]`.
func help(w streams, args []string) int {
	if len(args) == 0 || isHelp(args[0]) {
		fmt.Fprint(w.out, usage())
		return 0
	}
	cmd, rest := lookup(args)
	if cmd == nil || len(rest) > 0 {
		if cs := group(args[0]); len(cs) > 0 && len(args) == 1 {
			fmt.Fprint(w.out, groupUsage(args[0], cs))
			return 0
		}
		fmt.Fprintf(w.err, "immutd help: unknown command %q\n\n%s", strings.Join(args, " "), usage())
		return 2
	}
	cmd.printHelp(w.out)
	return 0
}

func isHelp(arg string) bool {
	return arg == "-h" || arg == "-help" || arg == "--help"
}

// usage is the top-level usage text.
func usage() string {
	return "usage: immutd COMMAND [ARGUMENTS] [flags]\n\ncommands:\n" + list(commands) +
		"  help [COMMAND]            show this text, or a command's usage and flags\n\n" +
		clientHelp + "\nRun 'immutd help COMMAND' or 'immutd COMMAND -h' for a command's flags.\n"
}

// groupUsage is the usage text of a group of commands such as "fleet".
func groupUsage(name string, cs []*command) string {
	return "usage: immutd " + name + " SUBCOMMAND [ARGUMENTS] [flags]\n\nsubcommands:\n" + list(cs) +
		"\nRun 'immutd help " + name + " SUBCOMMAND' for a subcommand's flags.\n"
}

// list is one line per command: how it is called and its summary.
func list(cs []*command) string {
	var b strings.Builder
	for _, c := range cs {
		fmt.Fprintf(&b, "  %-24s  %s\n", strings.TrimSpace(c.name+" "+c.args), c.summary)
	}
	return b.String()
}

// flags returns a fresh flag set with the command's flags and the
// function that runs it.
func (c *command) flags() (*flag.FlagSet, runFunc) {
	fs := flag.NewFlagSet("immutd "+c.name, flag.ContinueOnError)
	// The flag package's own error and usage output is replaced by run's.
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	return fs, c.setup(fs)
}

func (c *command) synopsis(fs *flag.FlagSet) string {
	s := "usage: immutd " + c.name
	if c.args != "" {
		s += " " + c.args
	}
	n := 0
	fs.VisitAll(func(*flag.Flag) { n++ })
	if n > 0 {
		s += " [flags]"
	}
	return s
}

// printHelp prints the command's synopsis, description and flags.
func (c *command) printHelp(w io.Writer) {
	fs, _ := c.flags()
	fmt.Fprintf(w, "%s\n\n%s\n", c.synopsis(fs), c.about)
	n := 0
	fs.VisitAll(func(*flag.Flag) { n++ })
	if n > 0 {
		fmt.Fprint(w, "\nflags:\n")
		fs.SetOutput(w)
		fs.PrintDefaults()
	}
}

// run parses the command's arguments and runs it. A help flag anywhere
// wins, so that "immutd fleet drain -h" never reaches an agent.
func (c *command) run(ctx context.Context, w streams, args []string) int {
	if slices.ContainsFunc(args, isHelp) {
		c.printHelp(w.out)
		return 0
	}
	fs, runCmd := c.flags()
	pos, err := parseArgs(fs, args)
	if err == nil {
		switch {
		case len(pos) < c.minArgs:
			err = usageError(fmt.Sprintf("missing %s", c.args))
		case len(pos) > c.maxArgs && c.maxArgs == 0:
			err = usageError(fmt.Sprintf("unexpected argument %q", pos[0]))
		case len(pos) > c.maxArgs:
			err = usageError(fmt.Sprintf("too many arguments (%d); expected %s", len(pos), c.args))
		}
	}
	if err == nil {
		err = runCmd(ctx, w, pos)
	}
	var ue usageError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ue):
		fmt.Fprintf(w.err, "immutd %s: %s\n%s\nRun 'immutd help %s' for its flags.\n", c.name, clean(ue.Error()), c.synopsis(fs), c.name)
		return 2
	case errors.Is(err, errReported):
		return 1
	default:
		fmt.Fprintf(w.err, "immutd %s: %s\n", c.name, clean(err.Error()))
		return 1
	}
}

// parseArgs parses the flags wherever they are among args (the flag
// package alone stops at the first positional argument) and returns the
// positional arguments. "--" ends the flags. A positional argument that
// starts with "-" is refused: it is a mistyped flag far more often than
// a name, and must never be sent to an agent as one.
func parseArgs(fs *flag.FlagSet, args []string) ([]string, error) {
	var flags, pos []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			pos = append(pos, args[i+1:]...)
			break
		}
		if !strings.HasPrefix(a, "-") || a == "-" {
			pos = append(pos, a)
			continue
		}
		flags = append(flags, a)
		name, _, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if !hasValue && takesValue(fs, name) && i+1 < len(args) {
			i++
			flags = append(flags, args[i])
		}
	}
	if err := fs.Parse(flags); err != nil {
		return nil, usageError(err.Error())
	}
	for _, p := range pos {
		if strings.HasPrefix(p, "-") {
			return nil, usageError(fmt.Sprintf("unknown flag %q (no argument may start with \"-\")", p))
		}
	}
	return pos, nil
}

// takesValue says whether the flag name is followed by its value as the
// next argument (every defined flag but a boolean one).
func takesValue(fs *flag.FlagSet, name string) bool {
	f := fs.Lookup(name)
	if f == nil {
		return false
	}
	b, ok := f.Value.(interface{ IsBoolFlag() bool })
	return !ok || !b.IsBoolFlag()
}
