//go:build unix && !linux

package testenv

import "syscall"

func setParentDeathSignal(*syscall.SysProcAttr) {}

// groupAlive reports whether any process is left in the process group pgid.
func groupAlive(pgid int) bool { return groupExists(pgid) }
