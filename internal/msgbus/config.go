package msgbus

import (
	"errors"
	"math"
	"math/rand/v2"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/postern/postern/api/events"

	"github.com/postern/postern/internal/backoff"
	"github.com/postern/postern/internal/config"
)

// Size arithmetic. MaxRecordBytes bounds a record's value; the key and the
// headers (envelope, trace context, dead-letter reasons) get recordHeadroom
// on top, and a record batch some framing beyond that.
const (
	// recordHeadroom is what a record may carry besides its value: key,
	// headers and kafka-go's per-record overhead. The producer's batch
	// limit is MaxRecordBytes+recordHeadroom, so a record of the largest
	// value always fits in a batch of its own.
	recordHeadroom = 1 << 20
	// maxKeyAndHeaders is what Publish accepts for key plus headers; the
	// rest of recordHeadroom is left for the dead-letter headers and the
	// trace context the bus adds.
	maxKeyAndHeaders = recordHeadroom - 64<<10
	// batchFraming covers the record batch header and per-record varints
	// that kafka-go's batch accounting leaves out.
	batchFraming = 64 << 10
	// maxMaxRecordBytes keeps every derived size inside Kafka's int32.
	maxMaxRecordBytes = 1 << 30
)

// Config configures the message bus.
type Config struct {
	Brokers           []string      `yaml:"brokers" doc:"Kafka bootstrap servers host:port; empty runs the embedded broker"`
	TopicPrefix       string        `yaml:"topic_prefix" doc:"per-site prefix so that sites can share one cluster: topics are <prefix>.mail.inbound ...; empty uses the bare names"`
	Partitions        int           `yaml:"partitions" doc:"partitions of each topic the bus creates (existing topics are left as they are); the most consumers of a group that can work in parallel"`
	ReplicationFactor int           `yaml:"replication_factor" doc:"replicas of each topic the bus creates; 1 for the embedded broker, 3 on a production cluster"`
	MaxRecordBytes    int           `yaml:"max_record_bytes" doc:"the largest record value (a whole mail message) the bus carries, in bytes; larger ones are refused with a clear error. The producer batch, the consumer fetch size, the embedded broker's message.max.bytes and the topics' max.message.bytes are derived from it with headroom for key and headers"`
	Retry             RetryConfig   `yaml:"retry" doc:"how a consumer retries a record whose handler failed temporarily, before dead-lettering it"`
	DialTimeout       time.Duration `yaml:"dial_timeout" doc:"time limit to connect to a broker"`
	RequestTimeout    time.Duration `yaml:"request_timeout" doc:"time limit of one request to a broker (produce, fetch, commit, create topics); must allow for a batch of max_record_bytes"`
	BatchTimeout      time.Duration `yaml:"batch_timeout" doc:"how long the producer waits to fill a batch before sending it; publishing is synchronous, so this adds to the latency of every publish"`
	FetchMaxWait      time.Duration `yaml:"fetch_max_wait" doc:"how long the broker holds a consumer's fetch while no new record arrives"`
	SessionTimeout    time.Duration `yaml:"session_timeout" doc:"a consumer that sends no heartbeat for this long is dropped from its group and its partitions go to the others (the broker may enforce a minimum, 6s by default)"`
	RebalanceTimeout  time.Duration `yaml:"rebalance_timeout" doc:"how long the group coordinator waits for every consumer to rejoin during a rebalance"`
	HeartbeatInterval time.Duration `yaml:"heartbeat_interval" doc:"how often a consumer tells its group coordinator it is alive; less than a third of session_timeout"`
}

// RetryConfig is the capped exponential backoff of a consumer's temporary
// failures: attempt n (from 1) waits Initial·Multiplierⁿ⁻¹, capped at Max,
// spread by ±Jitter. With Attempts 0 (the default) a temporary failure is
// tried again until it passes: what fails temporarily is a dependency (the
// site state, the broker) that comes back, and mail already acknowledged to
// its sender must not end in the dead-letter topic because Redis restarted;
// a stuck partition shows as consumer lag and a warning per attempt. With
// Attempts n > 0 the record is dead-lettered after n tries. Permanent
// errors and panics are dead-lettered at once either way.
type RetryConfig struct {
	Initial    time.Duration `yaml:"initial" doc:"wait after the first failure"`
	Max        time.Duration `yaml:"max" doc:"longest wait between two attempts"`
	Multiplier float64       `yaml:"multiplier" doc:"factor between two successive waits (at least 1)"`
	Jitter     float64       `yaml:"jitter" doc:"random spread of each wait as a fraction of it, between 0 and 1 (0.2 is ±20%)"`
	Attempts   int           `yaml:"attempts" doc:"how many times a record that fails temporarily is handled before it is dead-lettered (1 = no retry); 0: until it succeeds (a dependency outage must not dead-letter accepted mail)"`
}

// DefaultConfig returns the defaults: no brokers (the embedded broker), no
// prefix, 3 partitions, replication factor 1, 25 MiB records.
func DefaultConfig() Config {
	return Config{
		Partitions:        3,
		ReplicationFactor: 1,
		MaxRecordBytes:    25 << 20,
		Retry:             DefaultRetryConfig(),
		DialTimeout:       10 * time.Second,
		RequestTimeout:    30 * time.Second,
		BatchTimeout:      2 * time.Millisecond,
		FetchMaxWait:      time.Second,
		SessionTimeout:    10 * time.Second,
		RebalanceTimeout:  10 * time.Second,
		HeartbeatInterval: time.Second,
	}
}

// DefaultRetryConfig returns 200ms doubling to at most 30s, ±20%, no limit
// on attempts.
func DefaultRetryConfig() RetryConfig {
	return RetryConfig{
		Initial:    200 * time.Millisecond,
		Max:        30 * time.Second,
		Multiplier: 2,
		Jitter:     0.2,
		Attempts:   0,
	}
}

// ProducerBatchBytes is the largest batch the producer sends: one record
// of MaxRecordBytes with its key and headers.
func (c Config) ProducerBatchBytes() int { return c.MaxRecordBytes + recordHeadroom }

// BrokerMaxMessageBytes is the message.max.bytes the broker needs (and the
// max.message.bytes the bus gives the topics it creates) to accept any
// batch the producer sends. Pass it to broker.Start for the embedded
// broker.
func (c Config) BrokerMaxMessageBytes() int { return c.ProducerBatchBytes() + batchFraming }

// fetchMaxBytes is the consumer's fetch size: at least one whole batch.
func (c Config) fetchMaxBytes() int { return c.BrokerMaxMessageBytes() + batchFraming }

// Validate checks the configuration; errors are *config.FieldError values
// naming the keys relative to the bus section.
func (c Config) Validate() error {
	var errs []error
	add := func(key, format string, args ...any) {
		errs = append(errs, config.Errorf(key, format, args...))
	}
	for i, b := range c.Brokers {
		if err := validateHostPort(b); err != nil {
			add("brokers", "entry %d: %v", i, err)
		}
	}
	if err := validateTopicPrefix(c.TopicPrefix); err != nil {
		add("topic_prefix", "%v", err)
	}
	if c.Partitions < 1 {
		add("partitions", "must be at least 1, got %d", c.Partitions)
	}
	if c.ReplicationFactor < 1 || c.ReplicationFactor > math.MaxInt16 {
		add("replication_factor", "must be at least 1, got %d", c.ReplicationFactor)
	}
	if c.MaxRecordBytes < 1 || c.MaxRecordBytes > maxMaxRecordBytes {
		add("max_record_bytes", "must be between 1 and %d bytes, got %d", maxMaxRecordBytes, c.MaxRecordBytes)
	}
	if err := c.Retry.Validate(); err != nil {
		errs = append(errs, config.Prefix("retry", err))
	}
	positive := []struct {
		key string
		d   time.Duration
	}{
		{"dial_timeout", c.DialTimeout},
		{"request_timeout", c.RequestTimeout},
		{"fetch_max_wait", c.FetchMaxWait},
		{"session_timeout", c.SessionTimeout},
		{"rebalance_timeout", c.RebalanceTimeout},
		{"heartbeat_interval", c.HeartbeatInterval},
	}
	for _, p := range positive {
		if p.d <= 0 {
			add(p.key, "must be positive, got %s", p.d)
		}
	}
	if c.BatchTimeout < 0 {
		add("batch_timeout", "must not be negative, got %s", c.BatchTimeout)
	}
	if c.HeartbeatInterval > 0 && c.SessionTimeout > 0 && 3*c.HeartbeatInterval > c.SessionTimeout {
		add("heartbeat_interval", "%s is more than a third of session_timeout (%s): a consumer would be dropped from its group after one late heartbeat", c.HeartbeatInterval, c.SessionTimeout)
	}
	// Kafka session and rebalance timeouts travel as int32 milliseconds.
	for _, p := range positive[3:5] {
		if p.d > math.MaxInt32*time.Millisecond {
			add(p.key, "%s is too long", p.d)
		}
	}
	return errors.Join(errs...)
}

// Validate checks the retry settings; keys are relative to the retry section.
func (r RetryConfig) Validate() error {
	var errs []error
	if r.Initial <= 0 {
		errs = append(errs, config.Errorf("initial", "must be positive, got %s", r.Initial))
	}
	if r.Max < r.Initial {
		errs = append(errs, config.Errorf("max", "must be at least initial (%s), got %s", r.Initial, r.Max))
	}
	if !(r.Multiplier >= 1) || math.IsInf(r.Multiplier, 0) {
		errs = append(errs, config.Errorf("multiplier", "must be a number of at least 1, got %v", r.Multiplier))
	}
	if !(r.Jitter >= 0 && r.Jitter <= 1) {
		errs = append(errs, config.Errorf("jitter", "must be between 0 and 1, got %v", r.Jitter))
	}
	if r.Attempts < 0 {
		errs = append(errs, config.Errorf("attempts", "must be 0 (no limit) or more, got %d", r.Attempts))
	}
	return errors.Join(errs...)
}

// exhausted reports whether a record that failed its attempt-th try is to
// be dead-lettered rather than tried again.
func (r RetryConfig) exhausted(attempt int) bool { return r.Attempts > 0 && attempt >= r.Attempts }

// Backoff returns the wait after failed attempt n (counted from 1):
// Initial·Multiplier^(n-1) capped at Max, then spread by ±Jitter and capped
// at Max again. The arithmetic is in floating point so that a large n
// neither overflows nor wraps.
func (r RetryConfig) Backoff(n int) time.Duration {
	return r.backoff(n, rand.Float64())
}

func (r RetryConfig) backoff(n int, u float64) time.Duration {
	return min(backoff.Jitter(backoff.Exp(r.Initial, r.Max, r.Multiplier, n), r.Jitter, u), r.Max)
}

func validateHostPort(s string) error {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return err
	}
	if host == "" {
		return errors.New(s + ": missing host")
	}
	if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
		return errors.New(s + ": port must be a number between 1 and 65535")
	}
	return nil
}

// maxTopicLen is Kafka's limit on a topic name.
const maxTopicLen = 249

func validateTopicPrefix(p string) error {
	if p == "" {
		return nil
	}
	for _, r := range p {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-') {
			return errors.New("may contain only ASCII letters, digits, '.', '_' and '-' (Kafka topic names), got " + strconv.Quote(p))
		}
	}
	if strings.HasPrefix(p, ".") || strings.HasSuffix(p, ".") {
		return errors.New("must not start or end with '.', got " + strconv.Quote(p))
	}
	longest := 0
	for _, t := range events.AllTopics {
		longest = max(longest, len(t))
	}
	if len(p)+1+longest > maxTopicLen {
		return errors.New("is too long: topic names are limited to " + strconv.Itoa(maxTopicLen) + " characters")
	}
	return nil
}
