// Package conformance owns the provider conformance suite: one table of
// behaviours that every provider (internal/provider/...) must show
// against its real backend, so that the reconciler can rely on them
// whatever the driver. A provider's own test calls Run with a Harness
// that supplies what differs per provider (how to open it over a state
// location, the sample app's images, how to change or kill an instance
// behind the provider's back, how to see what the backend really holds).
//
// The suite talks to the provider only through the method sets its
// consumers declare (the executor's Provider, the leader's drift
// inspection), and checks the backend only through the Harness, never through a
// provider's internals. It uses the sample app (cmd/sampleapp): it waits
// for GET /healthz on an instance's Address and launches it with
// -ignore-sigterm.
//
// A behaviour a provider is known to fail is listed, with the reason, in
// Harness.KnownFailures and skipped with that reason; set
// IMMUTD_CONFORMANCE_RUN_KNOWN_FAILURES=1 to run those too.
package conformance
