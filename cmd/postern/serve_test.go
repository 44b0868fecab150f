package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
)

// buildPostern compiles this command once per test binary run.
var (
	buildOnce sync.Once
	buildPath string
	buildErr  error
)

func postern(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "postern-bin")
		if err != nil {
			buildErr = err
			return
		}
		buildPath = filepath.Join(dir, "postern")
		out, err := exec.Command("go", "build", "-o", buildPath, ".").CombinedOutput()
		if err != nil {
			buildErr = errors.New(string(out))
		}
	})
	if buildErr != nil {
		t.Fatalf("go build: %v", buildErr)
	}
	return buildPath
}

// server is a running `postern serve` in its own working directory.
type server struct {
	cmd    *exec.Cmd
	out    *syncBuffer
	errOut *syncBuffer
	done   chan error
	addrs  map[string]string // "users" → "127.0.0.1:port", "broker" → ...
	token  string            // the admin token printed at the very first start
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Every port random, every file under dir: tests never collide with `make run`.
var testEnv = []string{
	"POSTERN_BROKER_LISTEN=127.0.0.1:0",
	"POSTERN_USERS_HTTP_LISTEN=127.0.0.1:0",
	"POSTERN_USERS_API_LISTEN=127.0.0.1:0",
	"POSTERN_FETCHER_HTTP_LISTEN=127.0.0.1:0",
	"POSTERN_ROUTER_HTTP_LISTEN=127.0.0.1:0",
	"POSTERN_RELAY_HTTP_LISTEN=127.0.0.1:0",
	"POSTERN_RELAY_SMTP_SUBMISSION_LISTEN=127.0.0.1:0",
	"POSTERN_RELAY_SMTP_INBOUND_LISTEN=127.0.0.1:0",
	"POSTERN_LOG_FORMAT=json",
}

var (
	listenLine = regexp.MustCompile(`(?m)^(\w+)\s+(?:http://)?(127\.0\.0\.1:\d+)`)
	tokenLine  = regexp.MustCompile(`^\s+(pst_\S+)$`)
)

func startServe(t *testing.T, dir string, extraEnv ...string) *server {
	t.Helper()
	cmd := exec.Command(postern(t), "serve")
	cmd.Dir = dir
	cmd.Env = append(append(os.Environ(), testEnv...), extraEnv...)
	s := &server{cmd: cmd, out: &syncBuffer{}, errOut: &syncBuffer{}, done: make(chan error, 1), addrs: map[string]string{}}
	pr, pw := io.Pipe()
	cmd.Stdout = io.MultiWriter(s.out, pw)
	cmd.Stderr = s.errOut
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { s.done <- cmd.Wait(); pw.Close() }()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			<-s.done
		}
	})

	want := map[string]bool{"broker": true, "api": true, "users": true, "fetcher": true, "router": true, "relay": true, "submission": true, "inbound": true}
	found := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			if m := tokenLine.FindStringSubmatch(sc.Text()); m != nil {
				s.token = m[1]
			}
			if m := listenLine.FindStringSubmatch(sc.Text()); m != nil && want[m[1]] {
				s.addrs[m[1]] = m[2]
				if len(s.addrs) == len(want) {
					close(found)
					break
				}
			}
		}
		_, _ = io.Copy(io.Discard, pr)
	}()
	select {
	case <-found:
	case err := <-s.done:
		t.Fatalf("postern serve exited early: %v\nstdout:\n%s\nstderr:\n%s", err, s.out, s.errOut)
	case <-time.After(90 * time.Second):
		t.Fatalf("postern serve did not print its endpoints\nstdout:\n%s\nstderr:\n%s", s.out, s.errOut)
	}
	return s
}

func (s *server) stop(t *testing.T, sig syscall.Signal) error {
	t.Helper()
	if err := s.cmd.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-s.done:
		return err
	case <-time.After(60 * time.Second):
		t.Fatalf("postern serve did not stop after %v\nstderr:\n%s", sig, s.errOut)
		return nil
	}
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	return getWithToken(t, url, "")
}

func getWithToken(t *testing.T, url, token string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// waitReady polls /readyz until 200, bounded.
func waitReady(t *testing.T, addr string) string {
	t.Helper()
	var body string
	for range 100 {
		var code int
		code, body = get(t, "http://"+addr+"/readyz")
		if code == http.StatusOK {
			return body
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("%s/readyz never became ready: %s", addr, body)
	return ""
}

func TestServeStartsAnswersStopsAndKeepsBrokerData(t *testing.T) {
	dir := t.TempDir()
	s := startServe(t, dir)

	for _, name := range []string{"users", "fetcher", "router", "relay"} {
		addr := s.addrs[name]
		if code, body := get(t, "http://"+addr+"/healthz"); code != http.StatusOK || !strings.Contains(body, name) {
			t.Errorf("%s /healthz = %d %q, want 200 naming the service", name, code, body)
		}
		body := waitReady(t, addr)
		if !strings.Contains(body, `"broker"`) {
			t.Errorf("%s /readyz does not check the broker: %s", name, body)
		}
		if name != "users" && !strings.Contains(body, `"state"`) {
			t.Errorf("%s /readyz does not check the site state: %s", name, body)
		}
		if code, body := get(t, "http://"+addr+"/metrics"); code != http.StatusOK || !strings.Contains(body, "go_goroutines") {
			t.Errorf("%s /metrics = %d, want Prometheus exposition", name, code)
		}
	}

	// The users API: closed without a token, open with the admin token
	// printed at the first start.
	if code, _ := get(t, "http://"+s.addrs["api"]+"/v1/sites"); code != http.StatusUnauthorized {
		t.Errorf("GET /v1/sites without a token = %d, want 401", code)
	}
	if s.token == "" {
		t.Fatalf("no admin token printed at the first start:\n%s", s.out)
	}
	if code, body := getWithToken(t, "http://"+s.addrs["api"]+"/v1/sites", s.token); code != http.StatusOK || !strings.Contains(body, `"items"`) {
		t.Errorf("GET /v1/sites with the bootstrap token = %d %s", code, body)
	}
	if strings.Contains(s.errOut.String(), s.token) {
		t.Error("the admin token appears in the log")
	}

	// Write a record through the embedded broker, as any Kafka client would.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	w := &kafka.Writer{Addr: kafka.TCP(s.addrs["broker"]), Topic: "mail.deadletter", RequiredAcks: kafka.RequireAll, BatchTimeout: time.Millisecond}
	if err := w.WriteMessages(ctx, kafka.Message{Key: []byte("k"), Value: []byte("kept across restarts")}); err != nil {
		t.Fatalf("produce to the embedded broker: %v", err)
	}
	_ = w.Close()

	if err := s.stop(t, syscall.SIGINT); err != nil {
		t.Fatalf("Ctrl-C: exit %v, want a clean exit\nstderr:\n%s", err, s.errOut)
	}
	if !strings.Contains(s.errOut.String(), "services drained") {
		t.Errorf("no drain in the log:\n%s", s.errOut)
	}
	if _, err := os.Stat(filepath.Join(dir, "var", "state", "site.db")); err != nil {
		t.Errorf("site state not under ./var: %v", err)
	}

	// A second start finds the broker data and the directory again: no
	// new token is printed, the first one still works.
	s2 := startServe(t, dir)
	if s2.token != "" {
		t.Error("a second start printed another admin token")
	}
	if code, _ := getWithToken(t, "http://"+s2.addrs["api"]+"/v1/sites", s.token); code != http.StatusOK {
		t.Errorf("the first start's token after a restart: %d", code)
	}
	r := kafka.NewReader(kafka.ReaderConfig{Brokers: []string{s2.addrs["broker"]}, Topic: "mail.deadletter", Partition: 0, MaxWait: 100 * time.Millisecond})
	defer r.Close()
	found := false
	for !found {
		m, err := r.ReadMessage(ctx)
		if err != nil {
			t.Fatalf("read back after restart: %v", err)
		}
		found = string(m.Value) == "kept across restarts"
	}
	if err := s2.stop(t, syscall.SIGTERM); err != nil {
		t.Fatalf("SIGTERM: exit %v\nstderr:\n%s", err, s2.errOut)
	}
}

func TestConfigErrorNamesTheKey(t *testing.T) {
	cmd := exec.Command(postern(t), "serve")
	cmd.Dir = t.TempDir()
	cmd.Env = append(append(os.Environ(), testEnv...), "POSTERN_BUS_PARTITIONS=0", "POSTERN_SITE=Not A Site")
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 2 {
		t.Fatalf("exit = %v, want status 2\n%s", err, out)
	}
	for _, key := range []string{"bus.partitions", "site"} {
		if !strings.Contains(string(out), key) {
			t.Errorf("error does not name %s:\n%s", key, out)
		}
	}
}

func TestConfigReferenceIsUpToDate(t *testing.T) {
	var out, errOut bytes.Buffer
	if code := run(context.Background(), []string{"config", "reference"}, &out, &errOut); code != 0 {
		t.Fatalf("config reference: %d %s", code, errOut.String())
	}
	committed, err := os.ReadFile("../../docs/configuration.md")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out.Bytes(), committed) {
		t.Error("docs/configuration.md is out of date: run `make generate`")
	}
	for _, key := range []string{"bus.brokers", "POSTERN_BUS_BROKERS", "state.redis.password", "router.http.listen"} {
		if !strings.Contains(out.String(), key) {
			t.Errorf("reference lacks %s", key)
		}
	}
}
