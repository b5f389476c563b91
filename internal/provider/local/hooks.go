package local

import "sync/atomic"

// Test hooks: nil outside tests. They are atomic because goroutines of
// an earlier test (a reaper, a log keeper) may still read them while the
// next test sets its own.
var (
	// reapHook runs after the reaper waited for the process and before
	// its exit is recorded, in the goroutine that records it.
	reapHook atomic.Pointer[func(id string)]
	// rotateHook runs when a log was rotated, under the instance lock:
	// seen is the log's size when the keeper copied it, copied the bytes
	// it kept in <id>.log.1.
	rotateHook atomic.Pointer[func(id string, seen, copied int64)]
	// inspectHook runs in Inspect after the walk of the instance root.
	inspectHook atomic.Pointer[func(id string)]
)
