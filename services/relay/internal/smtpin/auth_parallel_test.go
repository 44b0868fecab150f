package smtpin

import (
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
)

// TestAuthParallelLoginsWithTheRightPassword: a mail client (or several
// devices of one user) opening more sessions at once than the failure
// limit logs in on each of them: only failures count towards the lockout.
func TestAuthParallelLoginsWithTheRightPassword(t *testing.T) {
	e := start(t, func(c *Config, _ *testPKI) {
		c.AuthLockout = LockoutConfig{MaxFailuresPerUser: 3, MaxFailuresPerIP: 1000, Window: time.Hour}
	})
	const sessions = 10
	errs := make(chan error, sessions)
	var wg sync.WaitGroup
	for range sessions {
		wg.Go(func() {
			c := e.tlsDial(ListenerSubmission, e.clientTLS())
			errs <- c.Auth(sasl.NewPlainClient("", "alice", alicePW))
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("a parallel login with the right password: %v", err)
		}
	}
	// And guesses are still limited after those.
	for range 3 {
		wantCode(t, "guess", e.tlsDial(ListenerSubmission, e.clientTLS()).Auth(sasl.NewPlainClient("", "alice", "guess")), 535, "5.7.8")
	}
	wantCode(t, "right password once locked", e.tlsDial(ListenerSubmission, e.clientTLS()).Auth(sasl.NewPlainClient("", "alice", alicePW)), 454, "4.7.0")
}
