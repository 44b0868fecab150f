// Package broker runs Postern's embedded Kafka-protocol broker: one node of
// github.com/twmb/franz-go/pkg/kfake listening on a loopback address and
// persisting topics, records and committed group offsets in a data
// directory. It is what `postern serve` (the single-box profile) uses
// instead of a Kafka cluster; every client talks to it with the ordinary
// Kafka wire protocol.
//
// The embedded broker has no authentication and no TLS, so it only ever
// listens on a loopback address; a site that needs the bus reachable from
// other hosts runs a real Kafka cluster.
package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/postern/postern/internal/config"
)

// Config configures the embedded broker.
type Config struct {
	Listen     string `yaml:"listen" doc:"host:port the embedded Kafka-protocol broker listens on; port 0 picks a free port. The host must be a loopback address (127.0.0.1, ::1 or localhost): the embedded broker has no authentication, so it must not be reachable from other hosts"`
	DataDir    string `yaml:"data_dir" doc:"directory where the embedded broker keeps topics, records and committed consumer offsets across restarts; created if missing"`
	SyncWrites bool   `yaml:"sync_writes" doc:"fsync every record batch before acknowledging it: survives a power loss at the cost of throughput (without it a crash of the process loses nothing, a crash of the machine may lose the last writes)"`
}

// DefaultConfig returns the defaults: a random loopback port and var/broker.
func DefaultConfig() Config {
	return Config{
		Listen:  "127.0.0.1:0",
		DataDir: "var/broker",
	}
}

// Validate checks the configuration; errors are *config.FieldError values
// naming "listen" or "data_dir".
func (c Config) Validate() error {
	var errs []error
	if err := validateListen(c.Listen); err != nil {
		errs = append(errs, err)
	}
	if strings.TrimSpace(c.DataDir) == "" {
		errs = append(errs, config.Errorf("data_dir", "is required: the embedded broker keeps the mail in flight there"))
	}
	return errors.Join(errs...)
}

func validateListen(listen string) error {
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return config.Errorf("listen", "%q is not host:port: %v", listen, err)
	}
	if p, err := strconv.Atoi(port); err != nil || p < 0 || p > 65535 {
		return config.Errorf("listen", "%q: port %q is not a number between 0 and 65535", listen, port)
	}
	if !isLoopback(host) {
		return config.Errorf("listen", "%q: host must be a loopback address (127.0.0.1, ::1 or localhost): the embedded broker has no authentication, so anyone who can reach it could read and inject mail; use a Kafka cluster (bus.brokers) to share the bus between hosts", listen)
	}
	return nil
}

func isLoopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// Broker is a running embedded broker.
type Broker struct {
	cluster *kfake.Cluster
	addrs   []string
	unlock  func() error
	logger  *slog.Logger

	closeOnce sync.Once
	closeErr  error
}

// Start starts one broker node on cfg.Listen with its state in cfg.DataDir
// (created if missing; the state found there from an earlier run is
// loaded). maxMessageBytes raises the broker's message.max.bytes, the
// largest record batch it accepts; 0 keeps Kafka's default (about 1 MB).
// Only one process may use a data directory at a time.
func Start(cfg Config, maxMessageBytes int, logger *slog.Logger) (*Broker, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("broker: %w", err)
	}
	if logger == nil {
		logger = slog.Default()
	}
	logger = logger.With(slog.String("component", "broker"))
	if maxMessageBytes < 0 {
		return nil, fmt.Errorf("broker: negative max message bytes %d", maxMessageBytes)
	}

	dir, err := filepath.Abs(cfg.DataDir)
	if err != nil {
		return nil, fmt.Errorf("broker: data dir %s: %w", cfg.DataDir, err)
	}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("broker: create data dir: %w", err)
	}
	unlock, err := lockDir(dir)
	if err != nil {
		return nil, fmt.Errorf("broker: data dir %s: %w", dir, err)
	}

	listen := cfg.Listen
	opts := []kfake.Opt{
		kfake.NumBrokers(1),
		kfake.DataDir(dir),
		// kfake listens on 127.0.0.1:<port>; we listen where we are told.
		kfake.ListenFn(func(network, _ string) (net.Listener, error) {
			return net.Listen(network, listen)
		}),
		kfake.WithLogger(slogLogger{logger}),
		kfake.ClusterID("postern"),
	}
	if maxMessageBytes > 0 {
		opts = append(opts, kfake.BrokerConfigs(map[string]string{
			"message.max.bytes": strconv.Itoa(maxMessageBytes),
		}))
	}
	if cfg.SyncWrites {
		opts = append(opts, kfake.SyncWrites())
	}
	cluster, err := kfake.NewCluster(opts...)
	if err != nil {
		_ = unlock()
		return nil, fmt.Errorf("broker: start on %s: %w", listen, err)
	}
	b := &Broker{
		cluster: cluster,
		addrs:   cluster.ListenAddrs(),
		unlock:  unlock,
		logger:  logger,
	}
	logger.Info("embedded broker started",
		slog.Any("addrs", b.addrs), slog.String("data_dir", dir),
		slog.Int("max_message_bytes", maxMessageBytes), slog.Bool("sync_writes", cfg.SyncWrites))
	return b, nil
}

// Addrs returns the host:port addresses clients bootstrap from.
func (b *Broker) Addrs() []string { return append([]string(nil), b.addrs...) }

// Close stops accepting connections, persists the broker's state to the
// data directory and releases it. It is safe to call more than once.
func (b *Broker) Close() error {
	b.closeOnce.Do(func() {
		b.cluster.Close()
		if err := b.unlock(); err != nil {
			b.closeErr = fmt.Errorf("broker: release data dir: %w", err)
		}
		b.logger.Info("embedded broker stopped")
	})
	return b.closeErr
}

// slogLogger adapts slog to kfake's logger. kfake logs every request at its
// info level, so that becomes debug here.
type slogLogger struct{ l *slog.Logger }

func (s slogLogger) Logf(level kfake.LogLevel, format string, args ...any) {
	var lvl slog.Level
	switch level {
	case kfake.LogLevelError:
		lvl = slog.LevelError
	case kfake.LogLevelWarn:
		lvl = slog.LevelWarn
	case kfake.LogLevelInfo:
		lvl = slog.LevelDebug
	case kfake.LogLevelDebug:
		lvl = slog.LevelDebug - 4
	default:
		return
	}
	ctx := context.Background()
	if !s.l.Enabled(ctx, lvl) {
		return
	}
	s.l.Log(ctx, lvl, fmt.Sprintf(format, args...))
}
