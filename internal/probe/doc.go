// Package probe owns health checking: it runs the HTTP, TCP, gRPC and
// exec checks of every instance of every fleet, keeps each check's state
// machine (starting, healthy, unhealthy, never_healthy) with its
// thresholds and startup window, aggregates the checks into one verdict
// per instance with the evidence behind it, and keeps a short, bounded
// history of results.
//
// Each kind of check is a checker in a file of its own (check_http.go,
// check_tcp.go, check_grpc.go, check_exec.go), found by kind in one table
// (check.go); the rest of the package does not know the kinds apart.
//
// The state machine (state.go) is pure and separate from the scheduler
// (prober.go, schedule.go): a single loop over a min-heap of due times
// feeds a bounded pool of workers, so the number of goroutines does not
// grow with the number of instances (the connections kept open between
// probes, HTTP keep-alive and gRPC, have goroutines of their own). Verdicts are read with
// Prober.Verdict and Prober.Verdicts, or pushed through Options.OnChange;
// the planner decides what to do with them, this package never acts.
//
// The package exports immutd_probe_duration_seconds{kind,result}.
package probe
