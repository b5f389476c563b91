//go:build !linux

package promtest

import "syscall"

// sysProcAttr has nothing to add where there is no Pdeathsig: the test's
// cleanup kills Prometheus.
func sysProcAttr() *syscall.SysProcAttr { return nil }
