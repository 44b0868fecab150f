package download

import (
	"math"
	"math/rand/v2"
	"time"

	"github.com/postern/postern/internal/backoff"
	"github.com/postern/postern/internal/config"
)

// Config is the downloader's configuration (the fetcher's "download"
// section).
type Config struct {
	Concurrency         int           `yaml:"concurrency" doc:"how many POP3 accounts are downloaded at the same time"`
	DefaultPollInterval time.Duration `yaml:"default_poll_interval" doc:"poll interval of an account whose poll_interval_seconds is 0"`
	MinPollInterval     time.Duration `yaml:"min_poll_interval" doc:"shortest poll interval: an account asking for less is polled this often (protects the ISP)"`
	Jitter              float64       `yaml:"jitter" doc:"random spread of every poll interval and backoff, as a fraction of it, between 0 and 1 (0.1 is ±10%)"`
	Backoff             Backoff       `yaml:"backoff" doc:"how long a failing account waits before the next attempt (never less than its poll interval)"`
	AuthBackoff         Backoff       `yaml:"auth_backoff" doc:"how long an account whose login the ISP refuses waits before trying again, so that a wrong password does not hammer the ISP"`
	RescanInterval      time.Duration `yaml:"rescan_interval" doc:"how often the replica is read again for new, changed or removed accounts while no account is due"`
	CommandTimeout      time.Duration `yaml:"command_timeout" doc:"time limit of every wait for the POP3 server (connect, TLS handshake, each command, each read of a message)"`
	SessionTimeout      time.Duration `yaml:"session_timeout" doc:"time limit of one whole POP3 session (a slow server is cut off and retried later)"`
	DuplicateWindow     time.Duration `yaml:"duplicate_window" doc:"a message with the same Message-ID for the same recipient that arrives again within this window, through any account, is delivered once; 0 turns duplicate suppression off"`
	BatchMessages       int           `yaml:"batch_messages" doc:"most downloaded messages published to mail.inbound in one batch (the next ones are downloaded meanwhile)"`
	BatchBytes          int64         `yaml:"batch_bytes" doc:"a publish batch is closed once its messages reach this many bytes (the message that crosses it is in the batch)"`
	StatusGroup         string        `yaml:"status_group" doc:"Kafka consumer group reading mail.status to learn which downloaded messages were delivered; empty: <site>-fetcher-status"`
}

// Backoff is a capped exponential backoff: failure n (from 1) waits
// Initial·Multiplierⁿ⁻¹, capped at Max, spread by the Config's jitter.
type Backoff struct {
	Initial    time.Duration `yaml:"initial" doc:"wait after the first failure"`
	Max        time.Duration `yaml:"max" doc:"longest wait"`
	Multiplier float64       `yaml:"multiplier" doc:"factor between two successive waits (at least 1)"`
}

// DefaultConfig returns the defaults: 4 accounts at a time, 5 minutes
// between polls (at least 30s), ±10% jitter, failures waiting 1 minute
// doubling up to 30 minutes, refused logins 15 minutes doubling up to 6
// hours, a 24-hour duplicate window.
func DefaultConfig() Config {
	return Config{
		Concurrency:         4,
		DefaultPollInterval: 5 * time.Minute,
		MinPollInterval:     30 * time.Second,
		Jitter:              0.1,
		Backoff:             Backoff{Initial: time.Minute, Max: 30 * time.Minute, Multiplier: 2},
		AuthBackoff:         Backoff{Initial: 15 * time.Minute, Max: 6 * time.Hour, Multiplier: 2},
		RescanInterval:      time.Minute,
		CommandTimeout:      60 * time.Second,
		SessionTimeout:      30 * time.Minute,
		DuplicateWindow:     24 * time.Hour,
		BatchMessages:       64,
		BatchBytes:          16 << 20,
	}
}

// Validate checks the settings; errors are *config.FieldError values naming
// keys relative to the section.
func (c Config) Validate() error {
	var errs []error
	positive := func(key string, d time.Duration) {
		if d <= 0 {
			errs = append(errs, config.Errorf(key, "must be positive, got %s", d))
		}
	}
	if c.Concurrency < 1 {
		errs = append(errs, config.Errorf("concurrency", "must be at least 1, got %d", c.Concurrency))
	}
	positive("default_poll_interval", c.DefaultPollInterval)
	if c.MinPollInterval < 0 {
		errs = append(errs, config.Errorf("min_poll_interval", "must not be negative, got %s", c.MinPollInterval))
	}
	if c.Jitter < 0 || c.Jitter > 1 || math.IsNaN(c.Jitter) {
		errs = append(errs, config.Errorf("jitter", "must be between 0 and 1, got %g", c.Jitter))
	}
	errs = append(errs, c.Backoff.validate("backoff")...)
	errs = append(errs, c.AuthBackoff.validate("auth_backoff")...)
	positive("rescan_interval", c.RescanInterval)
	positive("command_timeout", c.CommandTimeout)
	positive("session_timeout", c.SessionTimeout)
	if c.DuplicateWindow < 0 {
		errs = append(errs, config.Errorf("duplicate_window", "must not be negative (0 turns it off), got %s", c.DuplicateWindow))
	}
	if c.BatchMessages < 1 {
		errs = append(errs, config.Errorf("batch_messages", "must be at least 1, got %d", c.BatchMessages))
	}
	if c.BatchBytes < 1 {
		errs = append(errs, config.Errorf("batch_bytes", "must be at least 1, got %d", c.BatchBytes))
	}
	return config.Join(errs...)
}

func (b Backoff) validate(prefix string) []error {
	var errs []error
	if b.Initial <= 0 {
		errs = append(errs, config.Errorf(prefix+".initial", "must be positive, got %s", b.Initial))
	}
	if b.Max < b.Initial {
		errs = append(errs, config.Errorf(prefix+".max", "must be at least initial (%s), got %s", b.Initial, b.Max))
	}
	if b.Multiplier < 1 || math.IsNaN(b.Multiplier) || math.IsInf(b.Multiplier, 0) {
		errs = append(errs, config.Errorf(prefix+".multiplier", "must be at least 1, got %g", b.Multiplier))
	}
	return errs
}

// delay returns the wait after failure n (from 1), before jitter.
func (b Backoff) delay(n int) time.Duration { return backoff.Exp(b.Initial, b.Max, b.Multiplier, n) }

// jitter spreads d by ±j (a fraction of d).
func jitter(d time.Duration, j float64) time.Duration { return backoff.Jitter(d, j, rand.Float64()) }
