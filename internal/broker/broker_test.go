package broker_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/postern/postern/internal/broker"
	"github.com/postern/postern/internal/config"
)

func testLogger() *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name   string
		listen string
		dir    string
		keys   []string
	}{
		{"defaults", "127.0.0.1:0", "var/broker", nil},
		{"fixed port", "127.0.0.1:9092", "d", nil},
		{"ipv6 loopback", "[::1]:9092", "d", nil},
		{"localhost", "localhost:9092", "d", nil},
		{"other loopback", "127.0.0.2:9092", "d", nil},
		{"all interfaces", "0.0.0.0:9092", "d", []string{"listen"}},
		{"empty host", ":9092", "d", []string{"listen"}},
		{"lan address", "192.168.1.10:9092", "d", []string{"listen"}},
		{"hostname", "mail.example.com:9092", "d", []string{"listen"}},
		{"no port", "127.0.0.1", "d", []string{"listen"}},
		{"bad port", "127.0.0.1:http", "d", []string{"listen"}},
		{"port out of range", "127.0.0.1:70000", "d", []string{"listen"}},
		{"no data dir", "127.0.0.1:0", "", []string{"data_dir"}},
		{"both", "0.0.0.0:0", " ", []string{"listen", "data_dir"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := broker.Config{Listen: tt.listen, DataDir: tt.dir}.Validate()
			if got := config.Keys(err); !slices.Equal(got, tt.keys) {
				t.Fatalf("Validate() keys = %v, want %v (error: %v)", got, tt.keys, err)
			}
		})
	}
	if err := broker.DefaultConfig().Validate(); err != nil {
		t.Fatalf("DefaultConfig().Validate() = %v", err)
	}
	err := broker.Config{Listen: "0.0.0.0:9092", DataDir: "d"}.Validate()
	var fe *config.FieldError
	if !errors.As(err, &fe) || !bytes.Contains([]byte(fe.Msg), []byte("no authentication")) {
		t.Errorf("a non-loopback listen address should be refused with the reason, got %v", err)
	}
}

func start(t *testing.T, cfg broker.Config, maxMessageBytes int) *broker.Broker {
	t.Helper()
	b, err := broker.Start(cfg, maxMessageBytes, testLogger())
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

func ctxTimeout(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func createTopic(t *testing.T, ctx context.Context, addr, topic string, partitions int) {
	t.Helper()
	c := &kafka.Client{Addr: kafka.TCP(addr), Timeout: 10 * time.Second}
	resp, err := c.CreateTopics(ctx, &kafka.CreateTopicsRequest{Topics: []kafka.TopicConfig{{
		Topic: topic, NumPartitions: partitions, ReplicationFactor: 1,
	}}})
	if err != nil {
		t.Fatalf("CreateTopics: %v", err)
	}
	if err := resp.Errors[topic]; err != nil {
		t.Fatalf("create %s: %v", topic, err)
	}
}

func writer(addr string) *kafka.Writer {
	return &kafka.Writer{
		Addr:         kafka.TCP(addr),
		RequiredAcks: kafka.RequireAll,
		BatchTimeout: time.Millisecond,
		BatchBytes:   8 << 20,
		Balancer:     &kafka.Hash{},
	}
}

func groupReader(addr, group, topic string) *kafka.Reader {
	return kafka.NewReader(kafka.ReaderConfig{
		Brokers:          []string{addr},
		GroupID:          group,
		Topic:            topic,
		CommitInterval:   0,
		StartOffset:      kafka.FirstOffset,
		MaxWait:          200 * time.Millisecond,
		SessionTimeout:   6 * time.Second,
		RebalanceTimeout: 2 * time.Second,
		JoinGroupBackoff: 200 * time.Millisecond,
	})
}

// TestRestartKeepsState is what the single-box profile relies on: records,
// topics and committed offsets survive a restart of the broker on the same
// data directory, so a consumer resumes where it committed.
func TestRestartKeepsState(t *testing.T) {
	ctx := ctxTimeout(t, 60*time.Second)
	cfg := broker.Config{Listen: "127.0.0.1:0", DataDir: t.TempDir()}
	const topic, group = "mail.inbound", "router"

	b1, err := broker.Start(cfg, 0, testLogger())
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	addr := b1.Addrs()[0]
	createTopic(t, ctx, addr, topic, 1)
	w := writer(addr)
	for i := range 3 {
		msg := kafka.Message{Topic: topic, Key: []byte("k"), Value: []byte("message-" + strconv.Itoa(i)),
			Headers: []kafka.Header{{Key: "h", Value: []byte("v" + strconv.Itoa(i))}}}
		if err := w.WriteMessages(ctx, msg); err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
	}
	w.Close()

	// Consume and commit the first two records only.
	r := groupReader(addr, group, topic)
	for i := range 2 {
		m, err := r.FetchMessage(ctx)
		if err != nil {
			t.Fatalf("fetch %d: %v", i, err)
		}
		if err := r.CommitMessages(ctx, m); err != nil {
			t.Fatalf("commit %d: %v", i, err)
		}
	}
	r.Close()
	if err := b1.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := b1.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}

	b2 := start(t, cfg, 0) // a new random port: clients bootstrap from Addrs
	addr = b2.Addrs()[0]

	conn, err := kafka.DialContext(ctx, "tcp", addr)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	parts, err := conn.ReadPartitions(topic)
	conn.Close()
	if err != nil || len(parts) != 1 {
		t.Fatalf("after restart, topic %s partitions = %v, %v; want 1", topic, parts, err)
	}

	r = groupReader(addr, group, topic)
	defer r.Close()
	m, err := r.FetchMessage(ctx)
	if err != nil {
		t.Fatalf("fetch after restart: %v", err)
	}
	if string(m.Value) != "message-2" || m.Offset != 2 {
		t.Fatalf("after restart the group resumed at offset %d (%q), want the first uncommitted record, offset 2 (message-2)", m.Offset, m.Value)
	}
	if len(m.Headers) != 1 || string(m.Headers[0].Value) != "v2" {
		t.Errorf("headers after restart = %v, want h=v2", m.Headers)
	}
	if err := r.CommitMessages(ctx, m); err != nil {
		t.Fatalf("commit after restart: %v", err)
	}

	// A reader from the beginning still sees all three records.
	all := kafka.NewReader(kafka.ReaderConfig{Brokers: []string{addr}, Topic: topic, Partition: 0, MaxWait: 200 * time.Millisecond})
	defer all.Close()
	for i := range 3 {
		m, err := all.ReadMessage(ctx)
		if err != nil {
			t.Fatalf("read %d: %v", i, err)
		}
		if want := "message-" + strconv.Itoa(i); string(m.Value) != want {
			t.Fatalf("record %d = %q, want %q", i, m.Value, want)
		}
	}
}

func TestDataDirInUse(t *testing.T) {
	cfg := broker.Config{Listen: "127.0.0.1:0", DataDir: t.TempDir()}
	start(t, cfg, 0)
	b, err := broker.Start(cfg, 0, testLogger())
	if err == nil {
		b.Close()
		t.Fatal("a second broker on the same data directory started; want an error")
	}
	t.Logf("second Start: %v", err)
}

func TestListenAddress(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	want := fmt.Sprintf("127.0.0.1:%d", port)
	b := start(t, broker.Config{Listen: want, DataDir: t.TempDir()}, 0)
	if got := b.Addrs(); !slices.Equal(got, []string{want}) {
		t.Fatalf("Addrs() = %v, want [%s]", got, want)
	}
	ctx := ctxTimeout(t, 10*time.Second)
	conn, err := kafka.DialContext(ctx, "tcp", want)
	if err != nil {
		t.Fatalf("dial %s: %v", want, err)
	}
	defer conn.Close()
	if _, err := conn.Brokers(); err != nil {
		t.Fatalf("metadata: %v", err)
	}
}

func TestStartRefusesBadConfig(t *testing.T) {
	if _, err := broker.Start(broker.Config{Listen: "0.0.0.0:0", DataDir: t.TempDir()}, 0, nil); err == nil {
		t.Fatal("Start on 0.0.0.0 succeeded; want an error")
	}
}

// TestMaxMessageBytes: the broker refuses batches above message.max.bytes
// (Kafka's default is about 1 MB) and accepts them once it is raised.
func TestMaxMessageBytes(t *testing.T) {
	ctx := ctxTimeout(t, 30*time.Second)
	value := bytes.Repeat([]byte("x"), 3<<20)
	for _, tt := range []struct {
		max    int
		accept bool
	}{{0, false}, {4 << 20, true}} {
		t.Run(strconv.Itoa(tt.max), func(t *testing.T) {
			b := start(t, broker.Config{Listen: "127.0.0.1:0", DataDir: t.TempDir()}, tt.max)
			addr := b.Addrs()[0]
			createTopic(t, ctx, addr, "big", 1)
			w := writer(addr)
			w.MaxAttempts = 1
			defer w.Close()
			err := w.WriteMessages(ctx, kafka.Message{Topic: "big", Value: value})
			var werrs kafka.WriteErrors
			if errors.As(err, &werrs) { // kafka-go's WriteErrors does not unwrap
				err = werrs[0]
			}
			if tt.accept && err != nil {
				t.Fatalf("3 MiB record with message.max.bytes=%d: %v", tt.max, err)
			}
			if !tt.accept && !errors.Is(err, kafka.MessageSizeTooLarge) {
				t.Fatalf("3 MiB record with the default message.max.bytes: err = %v, want MessageSizeTooLarge", err)
			}
		})
	}
}
