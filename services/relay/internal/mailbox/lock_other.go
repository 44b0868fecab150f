//go:build !unix

package mailbox

import (
	"errors"
	"os"
)

// tryLock is not available here: Maildir delivery needs flock (Unix).
func tryLock(f *os.File) (bool, error) {
	return false, errors.New("maildir delivery needs flock, which this system lacks")
}
