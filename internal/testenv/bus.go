package testenv

import (
	"context"
	"io"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/postern/postern/api/events"
	"github.com/postern/postern/internal/broker"
	"github.com/postern/postern/internal/msgbus"
)

// Bus starts an embedded broker (kfake, real Kafka wire protocol) with its
// data in a temporary directory and returns a bus connected to it with
// short test timeouts and every Postern topic created. Both are closed when the test ends.
func Bus(t testing.TB) *msgbus.Bus {
	t.Helper()
	cfg := msgbus.DefaultConfig()
	b, err := broker.Start(broker.Config{Listen: "127.0.0.1:0", DataDir: t.TempDir()}, cfg.BrokerMaxMessageBytes(), discard())
	if err != nil {
		t.Fatalf("embedded broker: %v", err)
	}
	t.Cleanup(func() { _ = b.Close() })
	cfg.Brokers = b.Addrs()
	cfg.Retry = msgbus.RetryConfig{Initial: 10 * time.Millisecond, Max: 100 * time.Millisecond, Multiplier: 2, Jitter: 0.2, Attempts: 3}
	cfg.FetchMaxWait = 100 * time.Millisecond
	cfg.SessionTimeout = 6 * time.Second
	cfg.RebalanceTimeout = 2 * time.Second
	cfg.HeartbeatInterval = 500 * time.Millisecond
	bus, err := msgbus.New(cfg, msgbus.Options{Logger: discard()})
	if err != nil {
		t.Fatalf("bus: %v", err)
	}
	t.Cleanup(func() { _ = bus.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := bus.EnsureTopics(ctx, events.AllTopics...); err != nil {
		t.Fatalf("creating topics: %v", err)
	}
	return bus
}

func discard() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

var collectors atomic.Int64

// Collect reads the logical topic from the beginning with a consumer group
// of its own until it has n records or timeout passes, and returns what it
// read (fewer than n on timeout: the caller's assertion says what is
// missing). Records of one key come in order; records of different keys
// may interleave.
func Collect(t testing.TB, bus *msgbus.Bus, topic string, n int, timeout time.Duration) []msgbus.Record {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var (
		mu  sync.Mutex
		got []msgbus.Record
	)
	group := "testenv-collect-" + strconv.FormatInt(collectors.Add(1), 10) + "-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	err := bus.Consume(ctx, msgbus.Subscription{Group: group, Topic: topic, Name: "collect", Handler: func(_ context.Context, r msgbus.Record) ([]msgbus.Message, error) {
		mu.Lock()
		defer mu.Unlock()
		got = append(got, r)
		if len(got) >= n {
			cancel()
		}
		return nil, nil
	}})
	if err != nil {
		t.Fatalf("collect %s: %v", topic, err)
	}
	mu.Lock()
	defer mu.Unlock()
	return got
}
