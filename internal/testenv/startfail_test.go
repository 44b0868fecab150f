package testenv

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
)

// recordingTB stands in for a test that StartDovecot fails or skips:
// Fatalf and Skipf record and end the goroutine, the rest goes to the real
// test.
type recordingTB struct {
	testing.TB
	mu              sync.Mutex
	failed, skipped bool
	messages        []string
}

func (r *recordingTB) record(flag *bool, format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	*flag = true
	r.messages = append(r.messages, fmt.Sprintf(format, args...))
}

func (r *recordingTB) Fatalf(format string, args ...any) {
	r.record(&r.failed, format, args...)
	runtime.Goexit()
}

func (r *recordingTB) Errorf(format string, args ...any) { r.record(&r.failed, format, args...) }

func (r *recordingTB) Skipf(format string, args ...any) {
	r.record(&r.skipped, format, args...)
	runtime.Goexit()
}

// startRecorded runs StartDovecot with a recordingTB and returns it.
func startRecorded(t *testing.T, opts DovecotOptions) *recordingTB {
	r := &recordingTB{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		StartDovecot(r, opts)
		r.record(new(bool), "StartDovecot returned")
	}()
	<-done
	return r
}

func TestStartDovecotFailures(t *testing.T) {
	// Not parallel: it sets environment variables.
	dir := t.TempDir()
	fake := func(name, script string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte("#!/bin/sh\n"+script), 0o755); err != nil {
			t.Fatal(err)
		}
		return p
	}

	t.Run("MissingBinarySkips", func(t *testing.T) {
		t.Setenv("CI", "")
		t.Setenv("POSTERN_TEST_DOVECOT", filepath.Join(dir, "no-such-dovecot"))
		r := startRecorded(t, DovecotOptions{})
		if !r.skipped || r.failed {
			t.Errorf("skipped=%v failed=%v %q, want a skip", r.skipped, r.failed, r.messages)
		}
	})

	t.Run("MissingBinaryFailsInCI", func(t *testing.T) {
		t.Setenv("CI", "true")
		t.Setenv("POSTERN_TEST_DOVECOT", filepath.Join(dir, "no-such-dovecot"))
		r := startRecorded(t, DovecotOptions{})
		if !r.failed || r.skipped {
			t.Errorf("skipped=%v failed=%v %q, want a failure", r.skipped, r.failed, r.messages)
		}
	})

	t.Run("FailedStartShowsLog", func(t *testing.T) {
		t.Setenv("POSTERN_TEST_DOVECOT", fake("dovecot-fatal", `echo "Fatal: simulated configuration error in $3" >&2; exit 89`))
		r := startRecorded(t, DovecotOptions{})
		msg := strings.Join(r.messages, "\n")
		if !r.failed || !strings.Contains(msg, "did not start") || !strings.Contains(msg, "Fatal: simulated configuration error in /") {
			t.Errorf("failed=%v, messages:\n%s", r.failed, msg)
		}
	})

	t.Run("PortTakenIsRetried", func(t *testing.T) {
		count := filepath.Join(dir, "attempts")
		t.Setenv("POSTERN_TEST_DOVECOT", fake("dovecot-busy", `echo x >> `+count+`
echo "Error: service(pop3-login): listen(127.0.0.1, 1) failed: Address already in use" >&2; exit 89`))
		r := startRecorded(t, DovecotOptions{})
		attempts, _ := os.ReadFile(count)
		if n := strings.Count(string(attempts), "x"); n != 3 || !r.failed {
			t.Errorf("%d attempts, failed=%v, want 3 attempts and a failure: %q", n, r.failed, r.messages)
		}
	})
}
