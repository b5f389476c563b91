package main

import (
	"context"
	"errors"
	"flag"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"

	"github.com/immutd/immutd/internal/agent"
	"github.com/immutd/immutd/internal/config"
)

// agentGCPercent is the agent's garbage collection target (GOGC).
const agentGCPercent = 50

func setupAgent(fs *flag.FlagSet) runFunc {
	cfgPath := fs.String("config", "/etc/immutd/agent.hcl", "agent configuration file")
	return func(ctx context.Context, w streams, _ []string) error {
		// The agent keeps thousands of small records alive for as long
		// as it runs: collecting at 50% heap growth instead of Go's 100%
		// costs a few percent of its CPU and keeps its memory per
		// instance near the live heap (BENCHMARKS.md, "Scale"). GOGC in
		// the environment overrides it.
		if os.Getenv("GOGC") == "" {
			debug.SetGCPercent(agentGCPercent)
		}
		cfg, err := config.LoadAgent(*cfgPath)
		if err != nil {
			return configError(w.err, err)
		}
		log, level, err := agent.NewLogger(cfg.LogLevel)
		if err != nil {
			return err
		}
		defer func() { _ = log.Sync() }()
		a, err := agent.New(cfg, log, level)
		if err != nil {
			log.Error("agent failed to start", agentErr(err))
			return errReported
		}
		hup := make(chan os.Signal, 1)
		signal.Notify(hup, syscall.SIGHUP)
		defer signal.Stop(hup)
		reload := make(chan struct{}, 1)
		go func() {
			for range hup {
				select {
				case reload <- struct{}{}:
				default:
				}
			}
		}()
		// ctx ends on SIGTERM or SIGINT (see run).
		if err := a.Run(ctx, reload); err != nil && !errors.Is(err, context.Canceled) {
			log.Error("agent failed", agentErr(err))
			return errReported
		}
		return nil
	}
}
