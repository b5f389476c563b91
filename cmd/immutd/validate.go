package main

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"

	"github.com/immutd/immutd/internal/config"
)

func setupValidate(fs *flag.FlagSet) runFunc {
	cfgPath := fs.String("config", "", "agent configuration file to check too (its fleets_dir is checked when no DIR is given)")
	return func(ctx context.Context, w streams, args []string) error {
		var dir string
		if len(args) == 1 {
			dir = args[0]
		}
		if *cfgPath != "" {
			cfg, err := config.LoadAgent(*cfgPath)
			if err != nil {
				return configError(w.err, err)
			}
			// Warnings do not change the exit status: the file loads.
			for _, d := range cfg.Warnings {
				fmt.Fprintf(w.err, "warning: %s\n", clean(d.String()))
			}
			fmt.Fprintf(w.out, "%s: agent configuration is valid\n", clean(*cfgPath))
			if dir == "" {
				dir = cfg.FleetsDir
			}
		}
		if dir == "" {
			return usageError("give a fleets directory or -config FILE")
		}
		set, err := config.LoadFleets(dir)
		if err != nil {
			return configError(w.err, err)
		}
		if problems := checkBundles(ctx, set); len(problems) > 0 {
			if ctx.Err() != nil {
				return errors.New("interrupted")
			}
			for _, d := range problems {
				fmt.Fprintln(w.err, clean(d.String()))
			}
			return errReported
		}
		names := set.Names()
		for i, n := range names {
			names[i] = clean(n)
		}
		fleets := "fleets are"
		if len(names) == 1 {
			fleets = "fleet is"
		}
		fmt.Fprintf(w.out, "%s: %d %s valid", clean(dir), len(names), fleets)
		if len(names) > 0 {
			fmt.Fprint(w.out, ": "+strings.Join(names, ", "))
		}
		fmt.Fprintln(w.out)
		return nil
	}
}

// checkBundles checks the image bundle of every local fleet as deeply as
// the agent does when it imports it, so that a broken bundle is found
// before the agent rejects the fleet. It is skipped while checkBundle is
// not set (see bundle.go).
func checkBundles(ctx context.Context, set *config.FleetSet) config.Diagnostics {
	if checkBundle == nil {
		return nil
	}
	var ds config.Diagnostics
	for _, f := range set.Fleets {
		if f.Provider != "local" {
			continue
		}
		if err := checkBundle(ctx, f.Image); err != nil {
			ds = append(ds, config.Diagnostic{Pos: f.Pos, Field: "fleet " + strconv.Quote(f.Name) + ".image", Message: err.Error()})
		}
	}
	// In file order, as the config package reports its problems.
	slices.SortStableFunc(ds, func(a, b config.Diagnostic) int {
		return cmp.Or(cmp.Compare(a.Pos.File, b.Pos.File), cmp.Compare(a.Pos.Line, b.Pos.Line), cmp.Compare(a.Pos.Column, b.Pos.Column))
	})
	return ds
}

// configError prints the problems of an invalid configuration, one per
// line, and returns errReported; any other error (a file that cannot be
// read) is returned for run to print.
func configError(w io.Writer, err error) error {
	var ds config.Diagnostics
	if !errors.As(err, &ds) {
		return err
	}
	for _, d := range ds {
		fmt.Fprintln(w, clean(d.String()))
	}
	return errReported
}
