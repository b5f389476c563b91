// Package local is the embedded default provider: it runs each instance
// of a fleet as a local process tree started from a golden image bundle.
//
// It owns three things under its directory:
//
//   - images/: a content-addressed store of imported bundles. A bundle is
//     a directory with a manifest.json ({"name", "version", "entrypoint"})
//     and any files. Import copies it into images/<hex>/, pins it by the
//     sha256 tree digest of the copy and keeps the per-entry manifest in
//     images/<hex>.entries.json for drift checks, so later edits of the
//     source bundle never reach a running fleet.
//   - instances/<id>/: the root (working directory) of one instance, a
//     fresh copy of its image. Metadata lives outside the root in
//     meta/<id>.json, stdout and stderr go to logs/<id>.log, and TMPDIR is
//     tmp/<id>/, so none of them count as changes to the instance.
//   - the processes themselves: each instance runs in its own session
//     (setsid) so it survives a restart of the agent. A process is
//     identified by its pid together with its start time from
//     /proc/<pid>/stat, which guards against pid reuse.
//
// The provider only launches and terminates; it never changes a running
// instance. Inspect compares an instance root with its image and reports
// in-place drift.
//
// Limits: processes that leave the instance's session (a second setsid or
// a double fork into a new session) are not tracked or terminated, and
// the provider relies on /proc, so it runs on Linux only.
package local
