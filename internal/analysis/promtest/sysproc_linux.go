package promtest

import "syscall"

// sysProcAttr makes the kernel kill Prometheus when the test binary dies
// without running its cleanups (a go test timeout, a signal). Pdeathsig
// follows the thread that started the child: were Start called from a
// goroutine locked to its thread (runtime.LockOSThread) that then exits,
// Prometheus would be killed early. The Go runtime ends no other threads.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
