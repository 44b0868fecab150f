package harness

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Bounds of the waits on a process.
const (
	startTimeout = 60 * time.Second // until every listener is printed
	stopTimeout  = 60 * time.Second // after SIGTERM (shutdown_timeout is 10s)
	killTimeout  = 20 * time.Second // after SIGKILL
)

// listenLine matches the lines postern serve prints for its listeners, e.g.
// "relay    http://127.0.0.1:41234  (...)" or "submission  127.0.0.1:2587  (...)".
var listenLine = regexp.MustCompile(`^(\w+)\s+(?:http://)?(127\.0\.0\.1:\d+)`)

// Process is one `postern serve` child process. It can be killed and
// started again on the same configuration and data: its listeners come back
// on the ports of the first start, so clients and peers keep their
// addresses. Its standard error (the JSON log) of every run goes to
// <Dir>/<Name>.log, its standard output to <Dir>/<Name>.out.
type Process struct {
	// Name names the process in logs and failure messages, e.g. "users"
	// or "site-hq".
	Name string
	// Dir is the working directory; the configuration and logs are kept
	// there, and relative paths in the configuration are relative to it.
	Dir string

	t testing.TB

	// command is the postern command the process runs ("serve" when
	// empty), and listeners the names of the listeners it prints (those
	// of cfg.endpoints() when nil): see StartBroker.
	command   string
	listeners []string

	mu     sync.Mutex
	cfg    Config
	addrs  map[string]string // listener name → 127.0.0.1:port, from the first start on
	cur    *run              // nil when not running
	starts int
}

// run is one execution of the process.
type run struct {
	cmd  *exec.Cmd
	done chan struct{} // closed when the process has exited
	err  error         // its exit status, once done is closed
}

// StartProcess writes cfg into dir and starts `postern serve --config` on
// it, waiting until every listener the configuration turns on is printed.
// The process is killed when the test ends. Listen addresses are best set
// to 127.0.0.1:0 (a free port, kept across restarts).
func StartProcess(t testing.TB, name, dir string, cfg Config) *Process {
	t.Helper()
	p := &Process{Name: name, Dir: dir, t: t, cfg: cfg.Clone(), addrs: map[string]string{}}
	t.Cleanup(p.cleanup)
	p.Start()
	return p
}

// Addr returns the address of the named listener ("broker", "api",
// "submission", "inbound", or a service's name for its side HTTP server),
// or "" if the process has not printed it.
func (p *Process) Addr(name string) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.addrs[name]
}

// Config returns a copy of the configuration the next start uses.
func (p *Process) Config() Config {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cfg.Clone()
}

// Set changes a configuration key for the next start (e.g. the services
// to run); it does not affect the running process.
func (p *Process) Set(key string, v any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cfg.Set(key, v)
}

// Running reports whether the process is running.
func (p *Process) Running() bool {
	p.mu.Lock()
	r := p.cur
	p.mu.Unlock()
	if r == nil {
		return false
	}
	select {
	case <-r.done:
		return false
	default:
		return true
	}
}

// Start starts the process (again) and waits until its listeners are
// printed. It fails the test if the process is running, exits during the
// start or does not start in time.
func (p *Process) Start() {
	t := p.t
	t.Helper()
	if p.Running() {
		t.Fatalf("harness: %s is already running", p.Name)
	}
	p.mu.Lock()
	p.starts++
	n := p.starts
	cfg := p.cfg.Clone()
	for name, addr := range p.addrs {
		if key := endpointKeys[name]; key != "" {
			if v, set := cfg.Get(key); !set || fmt.Sprint(v) != "" {
				cfg.Set(key, addr)
			}
		}
	}
	p.mu.Unlock()

	data, err := cfg.YAML()
	if err != nil {
		t.Fatalf("harness: %s configuration: %v", p.Name, err)
	}
	cfgPath := filepath.Join(p.Dir, p.Name+".yaml")
	if err := os.WriteFile(cfgPath, data, 0o600); err != nil {
		t.Fatalf("harness: %v", err)
	}
	logFile, err := os.OpenFile(p.LogPath(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatalf("harness: %v", err)
	}
	defer logFile.Close()
	outFile, err := os.OpenFile(filepath.Join(p.Dir, p.Name+".out"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatalf("harness: %v", err)
	}
	fmt.Fprintf(logFile, "=== harness: start %d of %s at %s\n", n, p.Name, time.Now().Format(time.RFC3339Nano))
	fmt.Fprintf(outFile, "=== harness: start %d of %s\n", n, p.Name)

	command := p.command
	if command == "" {
		command = "serve"
	}
	cmd := exec.Command(Binary(t), command, "--config", cfgPath)
	cmd.Dir = p.Dir
	cmd.Env = childEnv()
	cmd.Stderr = logFile
	cmd.SysProcAttr = childProcAttr()
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		outFile.Close()
		t.Fatalf("harness: %v", err)
	}
	if err := cmd.Start(); err != nil {
		outFile.Close()
		t.Fatalf("harness: starting %s: %v", p.Name, err)
	}
	r := &run{cmd: cmd, done: make(chan struct{})}
	want := map[string]bool{}
	listeners := p.listeners
	if listeners == nil {
		listeners = cfg.endpoints()
	}
	for _, name := range listeners {
		want[name] = true
	}
	printed := make(chan map[string]string, 1)
	var readers sync.WaitGroup
	readers.Add(1)
	go func() {
		defer readers.Done()
		defer outFile.Close()
		seen := map[string]string{}
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			line := sc.Text()
			fmt.Fprintln(outFile, line)
			if m := listenLine.FindStringSubmatch(line); m != nil && want[m[1]] && seen[m[1]] == "" {
				seen[m[1]] = m[2]
				if len(seen) == len(want) {
					printed <- seen
				}
			}
		}
		_, _ = io.Copy(outFile, stdout)
	}()
	go func() {
		readers.Wait() // Wait must not close the pipe before it is read
		r.err = cmd.Wait()
		close(r.done)
	}()
	p.mu.Lock()
	p.cur = r
	p.mu.Unlock()

	select {
	case addrs := <-printed:
		p.mu.Lock()
		for name, addr := range addrs {
			p.addrs[name] = addr
		}
		p.mu.Unlock()
	case <-r.done:
		t.Fatalf("harness: %s exited during its start: %v\n%s", p.Name, r.err, p.LogTail(40))
	case <-time.After(startTimeout):
		p.Kill()
		t.Fatalf("harness: %s did not print its listeners %v within %v\n%s", p.Name, keys(want), startTimeout, p.LogTail(40))
	}
}

// Kill sends SIGKILL and waits until the process is gone: nothing of it
// runs any more, as after a crash or a power cut of the process alone.
func (p *Process) Kill() {
	p.t.Helper()
	p.mu.Lock()
	r := p.cur
	p.cur = nil
	p.mu.Unlock()
	if r == nil {
		return
	}
	_ = r.cmd.Process.Signal(syscall.SIGKILL)
	select {
	case <-r.done:
	case <-time.After(killTimeout):
		p.t.Fatalf("harness: %s (pid %d) survived SIGKILL for %v", p.Name, r.cmd.Process.Pid, killTimeout)
	}
}

// Stop sends SIGTERM and waits until the process has drained and exited;
// it fails the test unless the exit is clean.
func (p *Process) Stop() {
	p.t.Helper()
	p.mu.Lock()
	r := p.cur
	p.cur = nil
	p.mu.Unlock()
	if r == nil {
		return
	}
	_ = r.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-r.done:
		if r.err != nil {
			p.t.Errorf("harness: %s stopped with %v\n%s", p.Name, r.err, p.LogTail(40))
		}
	case <-time.After(stopTimeout):
		_ = r.cmd.Process.Signal(syscall.SIGKILL)
		<-r.done
		p.t.Errorf("harness: %s did not stop within %v of SIGTERM; killed\n%s", p.Name, stopTimeout, p.LogTail(40))
	}
}

// CheckRunning fails the test at once, with the end of the log, if the
// process is not running (it crashed or stopped on an error).
func (p *Process) CheckRunning() {
	p.t.Helper()
	p.mu.Lock()
	r := p.cur
	p.mu.Unlock()
	if r == nil {
		p.t.Fatalf("harness: %s is not running", p.Name)
	}
	select {
	case <-r.done:
		p.t.Fatalf("harness: %s exited unexpectedly: %v\n%s", p.Name, r.err, p.LogTail(60))
	default:
	}
}

// LogPath is the file holding the standard error (the log) of every run.
func (p *Process) LogPath() string { return filepath.Join(p.Dir, p.Name+".log") }

// Log returns the log of every run so far.
func (p *Process) Log() string {
	b, _ := os.ReadFile(p.LogPath())
	return string(b)
}

// LogTail returns the last n lines of the log, for failure messages.
func (p *Process) LogTail(n int) string {
	lines := strings.Split(strings.TrimRight(p.Log(), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return fmt.Sprintf("--- last %d lines of %s ---\n%s", len(lines), p.LogPath(), strings.Join(lines, "\n"))
}

// cleanup kills the process at the end of the test and reports what the
// race detector found in any of its runs.
func (p *Process) cleanup() {
	p.Kill()
	log := p.Log()
	if i := strings.Index(log, "WARNING: DATA RACE"); i >= 0 {
		end := min(len(log), i+6000)
		p.t.Errorf("harness: the race detector found a data race in %s:\n%s", p.Name, log[i:end])
	}
	if p.t.Failed() {
		p.t.Logf("%s", p.LogTail(15))
	}
}

// childEnv is the environment of a child: this one without POSTERN_*
// variables, so that only the configuration file configures it.
func childEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "POSTERN_") {
			env = append(env, kv)
		}
	}
	return env
}

func keys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}

// TempDir returns a new empty directory whose path Dovecot's configuration
// can carry (letters, digits, "/._-"), removed when the test ends unless
// POSTERN_E2E_KEEP is set (then its path is logged).
func TempDir(t testing.TB, prefix string) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "pe2e-"+prefix+"-")
	if err != nil {
		t.Fatalf("harness: %v", err)
	}
	// Registered first, so it runs after every process started later has
	// been killed.
	t.Cleanup(func() {
		if os.Getenv("POSTERN_E2E_KEEP") != "" {
			t.Logf("harness: kept %s", dir)
			return
		}
		if err := os.RemoveAll(dir); err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Logf("harness: removing %s: %v", dir, err)
		}
	})
	return dir
}

// Eventually calls cond every 50ms until it returns nil, and fails the test
// with cond's last error after timeout. It also fails at once when one of
// procs stops running.
func Eventually(t testing.TB, timeout time.Duration, what string, cond func() error, procs ...*Process) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		for _, p := range procs {
			p.CheckRunning()
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not done after %v: %v", what, timeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Quiesce waits until state has returned the same value for quiet (the
// system under test has stopped changing it), polling every 50ms, and fails
// the test after timeout or when one of procs stops running. Use it after
// everything expected has arrived, before checking that nothing arrived
// twice.
func Quiesce(t testing.TB, timeout, quiet time.Duration, what string, state func() (string, error), procs ...*Process) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var last string
	var since time.Time
	for {
		cur, err := state()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		now := time.Now()
		if since.IsZero() || cur != last {
			last, since = cur, now
		} else if now.Sub(since) >= quiet {
			return
		}
		for _, p := range procs {
			p.CheckRunning()
		}
		if now.After(deadline) {
			t.Fatalf("%s: still changing after %v (last state %s)", what, timeout, last)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
