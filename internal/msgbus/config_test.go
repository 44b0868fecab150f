package msgbus

import (
	"math"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/internal/config"
)

func TestConfigValidate(t *testing.T) {
	if err := DefaultConfig().Validate(); err != nil {
		t.Fatalf("DefaultConfig().Validate() = %v", err)
	}
	tests := []struct {
		name   string
		modify func(*Config)
		keys   []string
	}{
		{"brokers", func(c *Config) { c.Brokers = []string{"kafka-1:9092", "[::1]:9093"} }, nil},
		{"broker without port", func(c *Config) { c.Brokers = []string{"kafka-1"} }, []string{"brokers"}},
		{"broker port 0", func(c *Config) { c.Brokers = []string{"kafka-1:0"} }, []string{"brokers"}},
		{"prefix", func(c *Config) { c.TopicPrefix = "site-1_a.b" }, nil},
		{"prefix with a slash", func(c *Config) { c.TopicPrefix = "a/b" }, []string{"topic_prefix"}},
		{"prefix ending in a dot", func(c *Config) { c.TopicPrefix = "hq." }, []string{"topic_prefix"}},
		{"prefix too long", func(c *Config) { c.TopicPrefix = strings.Repeat("a", 240) }, []string{"topic_prefix"}},
		{"no partitions", func(c *Config) { c.Partitions = 0 }, []string{"partitions"}},
		{"no replicas", func(c *Config) { c.ReplicationFactor = 0 }, []string{"replication_factor"}},
		{"zero record size", func(c *Config) { c.MaxRecordBytes = 0 }, []string{"max_record_bytes"}},
		{"huge record size", func(c *Config) { c.MaxRecordBytes = 2 << 30 }, []string{"max_record_bytes"}},
		{"retry", func(c *Config) {
			c.Retry = RetryConfig{Initial: 0, Max: -1, Multiplier: 0.5, Jitter: 1.5, Attempts: -1}
		}, []string{"retry.initial", "retry.max", "retry.multiplier", "retry.jitter", "retry.attempts"}},
		{"NaN multiplier", func(c *Config) { c.Retry.Multiplier = math.NaN() }, []string{"retry.multiplier"}},
		{"timeouts", func(c *Config) { c.DialTimeout, c.RequestTimeout, c.BatchTimeout = 0, -1, -1 },
			[]string{"dial_timeout", "request_timeout", "batch_timeout"}},
		{"no batch wait", func(c *Config) { c.BatchTimeout = 0 }, nil},
		{"heartbeat too slow", func(c *Config) { c.HeartbeatInterval = 5 * time.Second }, []string{"heartbeat_interval"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := DefaultConfig()
			tt.modify(&c)
			err := c.Validate()
			if got := config.Keys(err); !slices.Equal(got, tt.keys) {
				t.Fatalf("keys = %v, want %v (%v)", got, tt.keys, err)
			}
		})
	}
}

func TestDerivedSizes(t *testing.T) {
	c := DefaultConfig()
	if c.MaxRecordBytes != 25<<20 {
		t.Fatalf("default max record bytes %d, want 25 MiB", c.MaxRecordBytes)
	}
	if !(c.MaxRecordBytes+maxKeyAndHeaders < c.ProducerBatchBytes() &&
		c.ProducerBatchBytes() < c.BrokerMaxMessageBytes() &&
		c.BrokerMaxMessageBytes() <= c.fetchMaxBytes()) {
		t.Fatalf("sizes out of order: record %d, batch %d, broker %d, fetch %d",
			c.MaxRecordBytes, c.ProducerBatchBytes(), c.BrokerMaxMessageBytes(), c.fetchMaxBytes())
	}
	c.MaxRecordBytes = maxMaxRecordBytes
	if c.fetchMaxBytes() > math.MaxInt32 {
		t.Fatalf("fetch size %d overflows int32 at the largest max_record_bytes", c.fetchMaxBytes())
	}
}

func TestBackoff(t *testing.T) {
	r := DefaultRetryConfig()
	noJitter := r
	noJitter.Jitter = 0
	want := []time.Duration{200 * time.Millisecond, 400 * time.Millisecond, 800 * time.Millisecond, 1600 * time.Millisecond}
	for i, w := range want {
		if got := noJitter.Backoff(i + 1); got != w {
			t.Errorf("Backoff(%d) = %s, want %s", i+1, got, w)
		}
	}
	for _, n := range []int{9, 20, 1000, math.MaxInt} {
		if got := noJitter.Backoff(n); got != r.Max {
			t.Errorf("Backoff(%d) = %s, want the cap %s", n, got, r.Max)
		}
	}
	if got := noJitter.Backoff(0); got != r.Initial {
		t.Errorf("Backoff(0) = %s, want %s", got, r.Initial)
	}
	// Jitter spreads ±20% and never passes the cap.
	if lo, hi := r.backoff(1, 0), r.backoff(1, 1); lo != 160*time.Millisecond || hi != 240*time.Millisecond {
		t.Errorf("jitter bounds at attempt 1 = [%s, %s], want [160ms, 240ms]", lo, hi)
	}
	if hi := r.backoff(100, 1); hi != r.Max {
		t.Errorf("jittered cap = %s, want %s", hi, r.Max)
	}
	for range 1000 {
		if d := r.Backoff(3); d < 640*time.Millisecond || d > 960*time.Millisecond {
			t.Fatalf("Backoff(3) = %s, outside 800ms ±20%%", d)
		}
	}
}
