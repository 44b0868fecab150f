package broker_test

import (
	"bufio"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/postern/postern/internal/broker"
)

// envChildDir makes the test binary a broker process on that data
// directory (see TestMain); it prints "addr <host:port>" and waits to be
// killed.
const envChildDir = "POSTERN_BROKER_TEST_CHILD_DIR"

func TestMain(m *testing.M) {
	if dir := os.Getenv(envChildDir); dir != "" {
		logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
		b, err := broker.Start(broker.Config{Listen: "127.0.0.1:0", DataDir: dir}, 0, logger)
		if err != nil {
			fmt.Fprintln(os.Stderr, "child:", err)
			os.Exit(2)
		}
		fmt.Printf("addr %s\n", b.Addrs()[0])
		time.Sleep(2 * time.Minute) // until killed
		os.Exit(3)
	}
	os.Exit(m.Run())
}

// TestCrashKeepsAcknowledgedState: in the single-box profile the broker
// lives in the postern process, so it dies without Close when the process
// is killed. What it acknowledged (records with acks=all, committed
// offsets) must be there when it starts again on the same data directory.
func TestCrashKeepsAcknowledgedState(t *testing.T) {
	ctx := ctxTimeout(t, 60*time.Second)
	dir := t.TempDir()
	const topic, group = "mail.inbound", "router"

	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), envChildDir+"="+dir)
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "addr ") {
		t.Fatalf("child broker did not start: %q %v", line, err)
	}
	addr := strings.TrimSpace(strings.TrimPrefix(line, "addr "))

	createTopic(t, ctx, addr, topic, 1)
	w := writer(addr)
	for i := range 5 {
		if err := w.WriteMessages(ctx, kafka.Message{Topic: topic, Value: []byte("message-" + strconv.Itoa(i))}); err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
	}
	w.Close()
	r := groupReader(addr, group, topic)
	for i := range 3 {
		m, err := r.FetchMessage(ctx)
		if err != nil {
			t.Fatalf("fetch %d: %v", i, err)
		}
		if err := r.CommitMessages(ctx, m); err != nil {
			t.Fatalf("commit %d: %v", i, err)
		}
	}

	// Kill the broker process mid-flight: no Close, no final save.
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	r.Close()

	b := start(t, broker.Config{Listen: "127.0.0.1:0", DataDir: dir}, 0)
	addr = b.Addrs()[0]
	r = groupReader(addr, group, topic)
	defer r.Close()
	m, err := r.FetchMessage(ctx)
	if err != nil {
		t.Fatalf("fetch after crash: %v", err)
	}
	if m.Offset != 3 || string(m.Value) != "message-3" {
		t.Fatalf("after the crash the group resumed at offset %d (%q), want 3 (message-3), the first uncommitted record", m.Offset, m.Value)
	}
	conn, err := kafka.DialLeader(ctx, "tcp", addr, topic, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if last, err := conn.ReadLastOffset(); err != nil || last != 5 {
		t.Fatalf("after the crash the partition ends at %d (%v), want 5 acknowledged records", last, err)
	}
}
