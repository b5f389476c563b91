package main

import (
	"context"
	"errors"
	"flag"
	"os"
	"os/signal"
	"syscall"

	"github.com/immutd/immutd/internal/agent"
	"github.com/immutd/immutd/internal/config"
)

func setupAgent(fs *flag.FlagSet) runFunc {
	cfgPath := fs.String("config", "/etc/immutd/agent.hcl", "agent configuration file")
	return func(ctx context.Context, w streams, _ []string) error {
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
