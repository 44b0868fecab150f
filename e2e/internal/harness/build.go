// Package harness runs Postern the way an operator does, for end-to-end
// tests: `postern serve` as child processes (a users service, and one
// pipeline per site: fetcher, router and relay), a private Dovecot per site
// reading the relay's mailboxes with the relay's passwd-file, an SMTP sink
// standing in for the ISP's smarthost, and SMTP clients that submit mail
// the way a mail client does (STARTTLS, AUTH PLAIN).
//
// Every process listens on 127.0.0.1 only, keeps its data in a temporary
// directory, and is killed when the test ends. A process can be killed with
// SIGKILL and started again on the same data and the same ports
// ([Process.Kill], [Process.Start]), which is what the kill and chaos tests
// need.
//
// A test package using the harness runs its tests through [Main], which
// builds the postern binary once and removes it afterwards.
package harness

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
)

// binaryPackage is the import path of the command the harness runs.
const binaryPackage = "github.com/postern/postern/cmd/postern"

var build struct {
	once sync.Once
	dir  string
	path string
	err  error
}

// Main runs the tests of m and removes the postern binary built for them.
// Call it from TestMain: func TestMain(m *testing.M) { harness.Main(m) }.
func Main(m *testing.M) {
	code := m.Run()
	if build.dir != "" {
		os.RemoveAll(build.dir)
	}
	os.Exit(code)
}

// Binary returns the path of the postern binary, building it (once per test
// binary) from this workspace with `go build`. When the tests run under the
// race detector, so does the binary.
func Binary(t testing.TB) string {
	t.Helper()
	build.once.Do(func() {
		dir, err := os.MkdirTemp("", "postern-e2e-bin-")
		if err != nil {
			build.err = err
			return
		}
		build.dir = dir
		build.path = filepath.Join(dir, "postern")
		args := []string{"build", "-o", build.path}
		if raceEnabled {
			args = append(args, "-race")
		}
		out, err := exec.Command("go", append(args, binaryPackage)...).CombinedOutput()
		if err != nil {
			build.err = fmt.Errorf("go build %s: %v\n%s", binaryPackage, err, out)
		}
	})
	if build.err != nil {
		t.Fatalf("harness: %v", build.err)
	}
	if _, err := os.Stat(build.path); errors.Is(err, os.ErrNotExist) {
		t.Fatalf("harness: the postern binary %s is gone (run the tests through harness.Main)", build.path)
	}
	return build.path
}
