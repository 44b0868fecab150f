//go:build !linux

package harness

import "syscall"

// childProcAttr: no parent-death signal outside Linux; t.Cleanup kills
// the children.
func childProcAttr() *syscall.SysProcAttr { return nil }
