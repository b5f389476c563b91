// Command immutd keeps fleets of machines immutable: it replaces any
// instance that drifts from its golden image or fails its health checks.
//
//	immutd agent -config FILE        run an agent
//	immutd validate [-config FILE] [DIR]
//	immutd status [-addr ADDR] [-json] [-fleet NAME]
//	immutd events [-addr ADDR] [-fleet NAME] [-n N] [-follow]
//	immutd fleet drain|resolve NAME [-addr ADDR]
//	immutd cluster members|join ADDR|leave|remove NODE [-addr ADDR]
//	immutd tls init -dir DIR -nodes a,b,c [-ips ...]
//	immutd version
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
	"syscall"

	"github.com/immutd/immutd/internal/agent"
	"github.com/immutd/immutd/internal/config"
)

const usage = `usage: immutd <command> [flags]

commands:
  agent -config FILE      run an agent (see the README for the config reference)
  validate [DIR]          check fleet files; with -config FILE, also the agent config
                          and its fleets_dir. Exit status 0 when valid, 1 otherwise.
  status                  show fleets, instances, health, drift, blocked reasons, events
  events                  show the event log (why every instance was launched or killed)
  fleet drain NAME        terminate the instances of a fleet removed from the files
  fleet resolve NAME      pin the fleet's image reference again (after a tag moved)
  cluster members         list the servers of the cluster with their health
  cluster join ADDR       make this agent join the cluster through a peer's cluster address
  cluster leave           remove this agent from the cluster, then stop it
  cluster remove NODE     remove a server (by id or name) from the cluster
  tls init                create a CA and one certificate per agent for cluster mTLS
  version                 print the version

Commands that talk to an agent take -addr (default $IMMUTD_ADDR or
127.0.0.1:7979), -token-file (default $IMMUTD_TOKEN_FILE) for the API
token, and -ca-file for an https:// address.

Run 'immutd <command> -h' for a command's flags.
`

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch args[0] {
	case "agent":
		return cmdAgent(args[1:], stderr)
	case "validate":
		return cmdValidate(args[1:], stdout, stderr)
	case "status":
		return cmdStatus(args[1:], stdout, stderr)
	case "events":
		return cmdEvents(args[1:], stdout, stderr)
	case "fleet":
		return cmdFleet(args[1:], stdout, stderr)
	case "cluster":
		return cmdCluster(args[1:], stdout, stderr)
	case "tls":
		return cmdTLS(args[1:], stdout, stderr)
	case "version", "-version", "--version":
		fmt.Fprintf(stdout, "immutd %s (revision %s, %s)\n", agent.Version, agent.Revision, runtime.Version())
		return 0
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	}
	fmt.Fprintf(stderr, "immutd: unknown command %q\n\n%s", args[0], usage)
	return 2
}

func cmdAgent(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("agent", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgPath := fs.String("config", "/etc/immutd/agent.hcl", "agent configuration file")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	cfg, err := config.LoadAgent(*cfgPath)
	if err != nil {
		fmt.Fprintf(stderr, "immutd: %v\n", err)
		return 1
	}
	log, level, err := agent.NewLogger(cfg.LogLevel)
	if err != nil {
		fmt.Fprintf(stderr, "immutd: %v\n", err)
		return 1
	}
	defer func() { _ = log.Sync() }()
	a, err := agent.New(cfg, log, level)
	if err != nil {
		log.Error("agent failed to start", agentErr(err))
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	reload := make(chan struct{}, 1)
	go func() {
		for range hup {
			select {
			case reload <- struct{}{}:
			default:
			}
		}
	}()
	if err := a.Run(ctx, reload); err != nil && !errors.Is(err, context.Canceled) {
		log.Error("agent failed", agentErr(err))
		return 1
	}
	return 0
}

func cmdValidate(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("validate", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgPath := fs.String("config", "", "agent configuration file to check too (its fleets_dir is validated when no DIR is given)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	dir := fs.Arg(0)
	if *cfgPath != "" {
		cfg, err := config.LoadAgent(*cfgPath)
		if err != nil {
			fmt.Fprintln(stderr, err)
			return 1
		}
		fmt.Fprintf(stdout, "%s: agent configuration is valid\n", *cfgPath)
		if dir == "" {
			dir = cfg.FleetsDir
		}
	}
	if dir == "" {
		fmt.Fprintln(stderr, "immutd validate: give a fleets directory or -config FILE")
		return 2
	}
	set, err := config.LoadFleets(dir)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	fmt.Fprintf(stdout, "%s: %d fleets are valid", dir, len(set.Fleets))
	for i, n := range set.Names() {
		sep := ", "
		if i == 0 {
			sep = ": "
		}
		fmt.Fprint(stdout, sep+n)
	}
	fmt.Fprintln(stdout)
	return 0
}
