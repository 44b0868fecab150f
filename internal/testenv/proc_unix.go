//go:build unix

package testenv

import (
	"errors"
	"syscall"
)

// Dovecot's master does not take its children down when it is killed, and
// leaves logged-in imap/pop3 processes running after a graceful stop until
// their clients disconnect. The harness therefore starts dovecot in a
// process group of its own, led by the process it started (so the group's id
// is the master's pid), and signals that group.

func newProcessGroupAttr() *syscall.SysProcAttr {
	attr := &syscall.SysProcAttr{Setpgid: true}
	setParentDeathSignal(attr)
	return attr
}

// signalGroup sends SIGTERM (or SIGKILL when kill is set) to the process
// group led by pid.
func signalGroup(pid int, kill bool) error {
	sig := syscall.SIGTERM
	if kill {
		sig = syscall.SIGKILL
	}
	return syscall.Kill(-pid, sig)
}

// groupExists reports whether the process group pgid has any process,
// zombies included.
func groupExists(pgid int) bool {
	err := syscall.Kill(-pgid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}
