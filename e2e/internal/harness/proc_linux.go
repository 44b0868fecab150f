//go:build linux

package harness

import "syscall"

// childProcAttr makes a child die with the test binary (SIGKILL when its
// parent thread exits), so a crashed or timed-out test leaves no postern
// running.
func childProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
