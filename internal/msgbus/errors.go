package msgbus

import (
	"errors"
	"fmt"
)

// ErrTooLarge is wrapped by the error Publish returns for a record larger
// than the bus carries (Config.MaxRecordBytes for the value). Such an error
// is also permanent: retrying cannot help.
var ErrTooLarge = errors.New("record too large")

// Permanent marks err as permanent: a consumer dead-letters the record at
// once instead of retrying it. Every other error is temporary. Permanent(nil)
// is nil.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	if IsPermanent(err) {
		return err
	}
	return &permanentError{err: err}
}

// IsPermanent reports whether err, or an error it wraps, was marked with
// Permanent.
func IsPermanent(err error) bool {
	var p *permanentError
	return errors.As(err, &p)
}

type permanentError struct{ err error }

func (e *permanentError) Error() string { return e.err.Error() }
func (e *permanentError) Unwrap() error { return e.err }

// panicError is what a handler's panic becomes: permanent, with the stack
// for the log.
type panicError struct {
	value any
	stack []byte
}

func (e *panicError) Error() string { return fmt.Sprintf("handler panicked: %v", e.value) }
