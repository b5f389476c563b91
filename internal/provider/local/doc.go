// Package local is the embedded default provider: it runs each instance
// of a fleet as a local process tree started from a golden image bundle.
//
// It owns these things under its directory:
//
//   - images/: a content-addressed store of imported bundles. A bundle is
//     a directory with a manifest.json ({"name", "version", "entrypoint"})
//     and any files. Import copies it into images/<hex>/, pins it by the
//     sha256 tree digest of the copy and keeps the per-entry manifest in
//     images/<hex>.entries.json for drift checks, so later edits of the
//     source bundle never reach a running fleet. CheckBundle runs the
//     same checks without copying.
//   - instances/<id>/: the root (working directory) of one instance, a
//     fresh copy of its image. Metadata lives outside the root in
//     meta/<id>.json, and TMPDIR is tmp/<id>/, so neither counts as a
//     change to the instance. Drift inspection never follows symlinks,
//     not even a root replaced by one.
//   - locks/<id>.lock: the lock of one instance, flock(2)ed by every
//     operation on it (launch, terminate, recording an exit, recovering
//     an interrupted launch, log rotation). Several agents on one host
//     may share the directory, each with its own Provider, and the agent
//     that terminates an instance is not always the one that launched
//     (and reaps) it. The file is removed with the instance.
//   - ports/<port>: the reservation of a TCP port, holding the id of the
//     instance it was given to. Launch gives every instance a port the
//     kernel reports free and no reservation holds, so two instances of
//     the directory never share one; the reservation goes with the
//     instance's files, and one whose instance has no metadata any more
//     is stale and may be taken over.
//   - the instance logs, in Options.LogDir (default logs/): stdout and
//     stderr of instance <id> are appended, by the instance itself, to
//     <id>.log. Run keeps each log within Options.LogMaxSize by
//     copy-and-truncate: the last half of the maximum goes to <id>.log.1
//     and <id>.log is truncated to zero, so an instance's logs hold about
//     1.5 times the maximum, plus what it writes before Run reacts (a
//     file event, or the sweep every second). Lines written between the
//     copy and the truncate are lost. The instance writes the file itself
//     with O_APPEND, never through a pipe the agent reads, so it neither
//     depends on the agent nor gets SIGPIPE when the agent stops.
//   - the processes themselves: each instance runs in its own session
//     (setsid) so it survives a restart of the agent. A process is
//     identified by its pid together with its start time from
//     /proc/<pid>/stat, which guards against pid reuse. The provider
//     reaps the processes it started with one goroutine for all of them,
//     waiting on their pidfds in one epoll set (reaper.go), and Watch
//     tells the leader when one of them exits.
//
// The provider only launches and terminates; it never changes a running
// instance. Inspect compares an instance root with its image and reports
// in-place drift; a per-instance cache keyed on each file's stat (ctime
// included) spares it re-hashing unchanged files, with a slow full
// re-hash as a backstop (driftcache.go).
//
// Limits: processes that leave the instance's session (a second setsid or
// a double fork into a new session) are not tracked or terminated, and
// the provider relies on /proc, so it runs on Linux only.
package local
