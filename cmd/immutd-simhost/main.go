// Command immutd-simhost is a BENCHMARK TOOL, not a production
// provider: it serves the simulated instances of immutd's sim provider
// (internal/provider/sim), so that tens of thousands of instances can be
// driven through the real agent, raft, prober and planner on one small
// machine.
//
// Each instance is a listening socket on a loopback address that answers
// any HTTP request with 200 "ok", or 500 while its health is flipped to
// failing. The sim provider starts hosts as it needs them, in its
// directory, and talks to each over <dir>/hosts/<index>.sock (mode 0600,
// in a 0700 directory). Hosts outlive the agent that started them; stop
// one with SIGTERM or POST /v1/shutdown on its socket. See the sim
// package's documentation for the design and its limits.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/immutd/immutd/internal/provider/sim"
)

func main() {
	var o sim.HostOptions
	flag.StringVar(&o.Dir, "dir", "", "the sim provider directory (required)")
	flag.IntVar(&o.Index, "index", 0, fmt.Sprintf("this host's number, 0 to %d: it serves on 127.X.<index>.1", sim.MaxHosts-1))
	flag.IntVar(&o.Capacity, "capacity", sim.DefaultHostCapacity, fmt.Sprintf("instances served, at most %d", sim.MaxHostCapacity))
	flag.IntVar(&o.MaxConns, "max-conns", 0, "connections accepted at once (default 2 x capacity)")
	flag.Float64Var(&o.HealthFlipRate, "health-flip-rate", 0, "fraction of healthy instances per minute whose health flips to failing")
	flag.Uint64Var(&o.Seed, "seed", 0, "seed of the health flips")
	flag.DurationVar(&o.IdleExit, "idle-exit", 0, "exit after serving no instance for this long (0: never)")
	flag.Parse()
	if o.Dir == "" || flag.NArg() > 0 {
		fmt.Fprintln(os.Stderr, "usage: immutd-simhost -dir DIR [-index N] [-capacity N] [-max-conns N] [-health-flip-rate F] [-seed N] [-idle-exit D]")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	start := time.Now()
	if err := sim.RunHost(ctx, o); err != nil {
		fmt.Fprintf(os.Stderr, "immutd-simhost: %v (after %s)\n", err, time.Since(start).Round(time.Millisecond))
		os.Exit(1)
	}
}
