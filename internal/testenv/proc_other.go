//go:build !unix

package testenv

import (
	"errors"
	"syscall"
)

// Dovecot runs on Unix only; these stubs keep the package compiling
// elsewhere (StartDovecot then fails or skips as usual).

func newProcessGroupAttr() *syscall.SysProcAttr { return nil }

func signalGroup(int, bool) error { return errors.ErrUnsupported }

func groupAlive(int) bool { return false }
