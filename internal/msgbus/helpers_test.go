package msgbus

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/postern/postern/internal/broker"
)

// testConfig is DefaultConfig with timings for tests: quick retries and
// rebalances (6s is the broker's minimum session timeout).
func testConfig(brokers []string) Config {
	cfg := DefaultConfig()
	cfg.Brokers = brokers
	cfg.Retry = RetryConfig{Initial: 10 * time.Millisecond, Max: 50 * time.Millisecond, Multiplier: 2, Jitter: 0.2, Attempts: 3}
	cfg.FetchMaxWait = 200 * time.Millisecond
	cfg.SessionTimeout = 6 * time.Second
	cfg.RebalanceTimeout = 2 * time.Second
	cfg.HeartbeatInterval = 500 * time.Millisecond
	cfg.RequestTimeout = 60 * time.Second // 25 MiB records under -race
	return cfg
}

func testLogger() *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// startBroker runs the embedded broker on a random loopback port with its
// data in a temporary directory.
func startBroker(t testing.TB) []string {
	t.Helper()
	b, err := broker.Start(broker.Config{Listen: "127.0.0.1:0", DataDir: t.TempDir()},
		DefaultConfig().BrokerMaxMessageBytes(), testLogger())
	if err != nil {
		t.Fatalf("start broker: %v", err)
	}
	t.Cleanup(func() { b.Close() })
	return b.Addrs()
}

func newBus(t testing.TB, cfg Config, opts Options) *Bus {
	t.Helper()
	if opts.Logger == nil {
		opts.Logger = testLogger()
	}
	b, err := New(cfg, opts)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

func ctxTimeout(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// consumeInBackground runs Consume until the test ends (or stop is called)
// and reports its result on the returned function.
func consumeInBackground(t testing.TB, b *Bus, s Subscription) (stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.Consume(ctx, s) }()
	var once sync.Once
	var result error
	stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case result = <-done:
			case <-time.After(30 * time.Second):
				result = fmt.Errorf("Consume did not return within 30s of cancel")
			}
		})
		return result
	}
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("Consume: %v", err)
		}
	})
	return stop
}

// topicRecords reads every record of a wire topic, all partitions, up to
// the high watermark, without a consumer group.
func topicRecords(t testing.TB, ctx context.Context, addr, topic string) []kafka.Message {
	t.Helper()
	conn, err := kafka.DialContext(ctx, "tcp", addr)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	parts, err := conn.ReadPartitions(topic)
	conn.Close()
	if err != nil {
		t.Fatalf("partitions of %s: %v", topic, err)
	}
	var out []kafka.Message
	for _, p := range parts {
		c, err := kafka.DialLeader(ctx, "tcp", addr, topic, p.ID)
		if err != nil {
			t.Fatalf("dial leader of %s/%d: %v", topic, p.ID, err)
		}
		last, err := c.ReadLastOffset()
		if err != nil {
			c.Close()
			t.Fatalf("last offset of %s/%d: %v", topic, p.ID, err)
		}
		if _, err := c.Seek(0, kafka.SeekAbsolute); err != nil {
			c.Close()
			t.Fatalf("seek: %v", err)
		}
		for off := int64(0); off < last; {
			_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
			batch := c.ReadBatch(1, 64<<20)
			for {
				m, err := batch.ReadMessage()
				if err != nil {
					break
				}
				out = append(out, m)
				off = m.Offset + 1
			}
			if err := batch.Close(); err != nil {
				c.Close()
				t.Fatalf("read %s/%d: %v", topic, p.ID, err)
			}
		}
		c.Close()
	}
	return out
}

// eventually polls cond every 50ms until it holds or d passes.
func eventually(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// committed returns the group's committed offsets of a wire topic, by partition.
func committed(t testing.TB, ctx context.Context, addr, group, topic string, partitions int) map[int]int64 {
	t.Helper()
	c := &kafka.Client{Addr: kafka.TCP(addr), Timeout: 10 * time.Second}
	ps := make([]int, partitions)
	for i := range ps {
		ps[i] = i
	}
	resp, err := c.OffsetFetch(ctx, &kafka.OffsetFetchRequest{GroupID: group, Topics: map[string][]int{topic: ps}})
	if err != nil {
		t.Fatalf("offset fetch: %v", err)
	}
	out := map[int]int64{}
	for _, p := range resp.Topics[topic] {
		out[p.Partition] = p.CommittedOffset
	}
	return out
}

func header(m kafka.Message, key string) (string, bool) {
	for i := len(m.Headers) - 1; i >= 0; i-- {
		if m.Headers[i].Key == key {
			return string(m.Headers[i].Value), true
		}
	}
	return "", false
}

// countingHandler counts calls; fn decides each call's result.
type countingHandler struct {
	calls atomic.Int64
	fn    func(ctx context.Context, rec Record, call int64) ([]Message, error)
}

func (h *countingHandler) handle(ctx context.Context, rec Record) ([]Message, error) {
	return h.fn(ctx, rec, h.calls.Add(1))
}

// logRecorder is a slog handler that keeps the records it is given.
type logRecorder struct {
	mu   sync.Mutex
	recs []slog.Record
}

func (l *logRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (l *logRecorder) Handle(_ context.Context, r slog.Record) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.recs = append(l.recs, r.Clone())
	return nil
}
func (l *logRecorder) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *logRecorder) WithGroup(string) slog.Handler      { return l }

func (l *logRecorder) count(level slog.Level, msg string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, r := range l.recs {
		if r.Level == level && r.Message == msg {
			n++
		}
	}
	return n
}
