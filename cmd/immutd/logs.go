package main

import (
	"context"
	"flag"
	"time"

	"github.com/immutd/immutd/internal/api"
)

func setupLogs(fs *flag.FlagSet) runFunc {
	cf := addClientFlags(fs)
	n := fs.Int64("bytes", api.DefaultLogBytes, "at most this many of the last bytes (up to 1 MiB)")
	return func(ctx context.Context, w streams, args []string) error {
		r, err := cf.connect()
		if err != nil {
			return err
		}
		ctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		out, err := r.Logs(ctx, args[0], *n)
		if err != nil {
			return r.explain(err)
		}
		// The app's output, with what could drive the terminal escaped;
		// its lines and tabs kept.
		_, err = w.out.Write([]byte(escape(string(out), true)))
		return err
	}
}
