// Package sim is a BENCHMARK TOOL, not a production provider: a
// simulated provider, in the spirit of Kubernetes' KWOK and Nomad's node
// simulators, whose instances are so cheap that 10,000 or 100,000 of
// them can be driven through the real agent, raft, prober and planner on
// a 2-core machine. Fleets use it with provider = "sim" once the agent
// configuration has a provider "sim" { ... } block.
//
// # Design
//
// An instance is a listening TCP socket on a loopback address that
// answers any HTTP request with 200 "ok", or 500 "failing" while its
// health is flipped. No process per instance: host processes
// (cmd/immutd-simhost, the same package's RunHost) serve them. A host
// serves at most its capacity (DefaultHostCapacity, 5,000) instances:
// each costs one listening socket and, while a prober keeps one, one
// accepted connection per agent probing it, and a host accepts as many
// connections as its open-file limit leaves (closing new ones beyond
// that): under a 20,000 limit, 15,000 connections next to 5,000
// listeners, enough for three agents each probing every instance only
// with a capacity of 4,000 or less (host_capacity). 100,000 instances are
// 20 hosts. Host k serves on 127.X.k.1 (X from 100 to 199, from a hash of
// the directory), ports 20000 upwards: ports below
// the ephemeral range (32768-60999), so the listeners never take a port
// an outgoing connection needs, on an address of its own, so hosts never
// compete for ports. The data plane of a host is one epoll loop over all
// its sockets: an idle instance costs no goroutine, no timer and no
// buffer (its per-instance memory is measured by the tests). One ticker
// per host keeps a coarse clock, closes connections silent for 90s and
// flips health at the configured rate.
//
// The provider directory (0700) holds:
//
//	hosts/<k>.sock   host k's control API (HTTP, 0600)
//	hosts/<k>.lock   flocked by host k for its life: a free lock is a dead host
//	hosts/<k>.pid    its pid; hosts/<k>.log its output
//	ids/<id>         which host instance id was placed on
//	images/<hex>.json an imported image
//	place.lock       serializes placement across the providers (agents) sharing the directory
//	agents/          the agents sharing the directory (see hostdir)
//
// Hosts outlive the agent that started them (they run in a session of
// their own), so a restarted or failed-over agent finds its instances
// again, and several agents on one machine share them through one
// directory. A provider finds the running hosts by their sockets and
// locks, and starts host k (the lowest number without one) when every
// running host is full. A launch writes ids/<id> and creates the
// instance on that host under place.lock, so launches of one id racing
// through two agents make one instance; List asks each host once, for a
// tab-separated list, which decodes 100,000 instances in milliseconds.
// A host that died took its instances with it (a machine that rebooted):
// they are no longer listed.
//
// # Simulation
//
// Options.LaunchLatency is spent in every Launch, as a cloud API would;
// Options.FailureRate of launches fail with a retryable error, drawn
// from Options.Seed, the instance id and its attempt, so runs are
// reproducible; Options.HealthFlipRate is the fraction of healthy
// instances per minute whose health flips to failing (for good: the
// instance must be replaced). The host's control API also sets an
// instance's health, makes it exit (a crash: it stops answering and is
// listed exited) and records simulated in-place changes, which Inspect
// reports as drift. The launch template is not run, but two of its
// traits are modelled so that the provider conformance suite applies: a
// command whose absolute path does not exist fails the launch, and an
// argument -ignore-sigterm (the sample app's flag) makes Terminate wait
// out the grace.
//
// An image is any file or directory: its digest is the SHA-256 of a
// manifest of its tree (paths, types, modes, contents). A directory may
// hold sim.json, {"exit_after": "5s"}, to make its instances exit by
// themselves that long after they start ("0s": at once).
package sim
