// Package haproxy is the traffic backend that switches the servers of one
// HAProxy backend over the Runtime API (the admin stats socket, a unix
// socket with "level admin"). It is written for HAProxy 2.6 (tested with
// Debian bookworm's 2.6.12) and uses no command newer than that (no
// "wait srv-removable", which came with 3.0).
//
// It owns the dynamic servers named "immutd-<instance id>" in that
// backend, and nothing else: servers an operator defined, in the
// configuration or at runtime, under any other name are never changed.
// HAProxy holds all state; the backend keeps none, so every call starts
// with a read of "show servers state <backend>" and ends with one that
// confirms the result.
//
//   - Admit adds the server ("add server ... disabled", then
//     "set server ... state ready"). With Config.Check the server gets
//     HAProxy's own health check (the backend's check settings, e.g.
//     "option httpchk"; default timings inter 2s, rise 2, fall 3), and
//     Admit returns only once that check has passed: HAProxy 2.6 marks
//     a server UP as soon as it leaves maintenance, before any check ran,
//     so Admit first lets it out of maintenance into drain, forces its
//     health down ("set server ... health down"), waits for "rise"
//     passing checks, and only then sets it ready.
//   - Drain sets the server to drain: no new traffic, existing sessions
//     go on.
//   - Connections counts the server's current sessions plus its queue
//     ("show stat": scur + qcur), what "del server" waits for.
//   - Remove sets the server to maintenance, ends its remaining sessions
//     ("shutdown sessions server") and deletes it. The executor calls
//     Remove only once the sessions are gone or its drain deadline has
//     passed; past that deadline the instance is about to be terminated,
//     which would cut those sessions anyway, and HAProxy refuses to
//     delete a server that still has sessions, so without the shutdown a
//     single long-lived connection (a websocket, a stuck download) would
//     keep the server, and so the old instance, forever. Cutting them at
//     HAProxy closes them cleanly and logs them with the 'K' flag.
//   - Sync re-creates admitted servers that are missing (a reload drops
//     every dynamic server), in maintenance or at another address (a
//     draining one is left to the executor), and removes servers with
//     the prefix whose instance id keep does not know. Sync never cuts
//     sessions: it puts such a server in maintenance and deletes it once
//     its sessions have ended, on this pass or a later one. Sync does not
//     wait for health checks of the servers it re-creates: they were
//     admitted already, and HAProxy takes a failing one out by itself.
//
// The server name is the prefix and the instance id verbatim, so it can be
// mapped back. Instance ids are what every provider accepts (1-128
// letters, digits, '.', '_' or '-', starting with a letter or digit), all
// characters HAProxy allows in a server name; other ids are refused, as
// are addresses that are not an IP literal with a port (dynamic servers do
// not resolve names in 2.6). One HAProxy backend belongs to one immutd
// fleet: Sync removes prefixed servers that keep does not know, so keep
// must know every instance that feeds the backend.
//
// Each Runtime API command uses its own connection (HAProxy's default,
// non-interactive mode), so calls may run concurrently. Every command is
// bounded by the caller's context and Config.Timeout, and every answer by
// a size limit (1 MiB). A socket that is missing, refuses connections or
// does not answer in time gives an error wrapping traffic.ErrUnreachable;
// a command HAProxy refuses gives an error quoting HAProxy's answer.
package haproxy
