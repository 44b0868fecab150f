package delivery

import (
	"errors"
	"fmt"
	"math"
	"net"
	"strings"
	"time"

	"github.com/postern/postern/api/events"
	"github.com/postern/postern/internal/backoff"
	"github.com/postern/postern/internal/config"
	"github.com/postern/postern/services/relay/internal/smtpout"
)

// Config is the delivery section of the relay's configuration.
type Config struct {
	Consumers        int               `yaml:"consumers" doc:"consumers of mail.delivery in this process; records of different partitions are delivered in parallel, so more than bus.partitions only adds idle consumers"`
	RetryConsumers   int               `yaml:"retry_consumers" doc:"consumers of each retry tier topic (mail.retry.N) in this process; at most bus.partitions are useful"`
	Hostname         string            `yaml:"hostname" doc:"the name this relay gives in EHLO and as Reporting-MTA of its bounces; empty: the machine's host name"`
	Postmaster       string            `yaml:"postmaster" doc:"From: address of the bounces (delivery status notifications) this relay writes; empty: postmaster@<hostname>"`
	Retry            RetryConfig       `yaml:"retry" doc:"when temporary failures are tried again, and for how long"`
	Smarthost        Smarthost         `yaml:"smarthost" doc:"the ISP's SMTP server that all outbound mail goes through"`
	SenderSmarthosts []SenderSmarthost `yaml:"sender_smarthosts" doc:"other smarthosts for mail from some sender domains; mail from any other domain (and bounces) uses smarthost"`
	Sites            SiteTLS           `yaml:"sites" doc:"delivery to other sites' relays (SMTP with mutual TLS to the smtp_endpoint in the directory)"`
	DialTimeout      time.Duration     `yaml:"dial_timeout" doc:"time limit to connect to a server, including TLS, the greeting and AUTH"`
	CommandTimeout   time.Duration     `yaml:"command_timeout" doc:"time limit for the reply to each SMTP command"`
	DataTimeout      time.Duration     `yaml:"data_timeout" doc:"time limit to send a message and get the reply to its final dot"`
	DrainTimeout     time.Duration     `yaml:"drain_timeout" doc:"on stop: how long a delivery already talking to a server may take to finish (cutting it could make the server keep a message the relay then sends again); keep it below shutdown_timeout"`
	IdempotencyTTL   time.Duration     `yaml:"idempotency_ttl" doc:"how long the relay remembers that a message was handed to a remote server, so that a redelivered record is not sent again; longer than retry.max_lifetime"`
}

// RetryConfig is the capped exponential backoff of temporary failures:
// after failed attempt n the next one is due base·factorⁿ⁻¹ later, capped at
// cap, spread by ±jitter; a temporary failure after max_lifetime bounces.
type RetryConfig struct {
	Base        time.Duration `yaml:"base" doc:"wait after the first failed attempt"`
	Factor      float64       `yaml:"factor" doc:"factor between two successive waits (at least 1)"`
	Cap         time.Duration `yaml:"cap" doc:"longest wait between two attempts"`
	Jitter      float64       `yaml:"jitter" doc:"random spread of each wait as a fraction of it, from 0 to 1 (0.2 is ±20%)"`
	MaxLifetime time.Duration `yaml:"max_lifetime" doc:"how long after the first attempt a message is still retried; a temporary failure after that bounces (expired)"`
}

// Smarthost is an SMTP server outbound mail is handed to.
type Smarthost struct {
	Host                  string        `yaml:"host" doc:"host name of the smarthost; empty: no smarthost, outbound mail waits (and expires)"`
	Port                  int           `yaml:"port" doc:"port of the smarthost (587 submission, 465 implicit TLS, 25)"`
	TLS                   string        `yaml:"tls" doc:"starttls (required), tls (implicit, port 465) or none (plaintext: a trusted LAN sink only, no AUTH)"`
	CAFile                string        `yaml:"ca_file" doc:"PEM file of the CA certificates that verify the smarthost; empty: the system's roots"`
	Username              string        `yaml:"username" doc:"AUTH user name; empty: no AUTH"`
	Password              config.Secret `yaml:"password" doc:"AUTH password"`
	MaxSessions           int           `yaml:"max_sessions" doc:"most SMTP sessions open to this smarthost at once (the concurrency limit)"`
	IdleTimeout           time.Duration `yaml:"idle_timeout" doc:"how long an unused session is kept open for the next message"`
	MaxMessagesPerSession int           `yaml:"max_messages_per_session" doc:"a session is closed after this many messages (0: no limit)"`
}

// SenderSmarthost is the smarthost of one sender domain. Port and tls
// default to 587 and starttls; the session limits are the main smarthost's.
type SenderSmarthost struct {
	Domain   string        `yaml:"domain" doc:"the envelope sender's domain this smarthost is for"`
	Host     string        `yaml:"host" doc:"host name of the smarthost"`
	Port     int           `yaml:"port" doc:"port of the smarthost; 0: 587"`
	TLS      string        `yaml:"tls" doc:"starttls, tls or none; empty: starttls"`
	CAFile   string        `yaml:"ca_file" doc:"PEM file of the CA certificates that verify this smarthost; empty: the system's roots"`
	Username string        `yaml:"username" doc:"AUTH user name; empty: no AUTH"`
	Password config.Secret `yaml:"password" doc:"AUTH password"`
}

// Smarthost returns the full settings: s's own, the defaults for port and
// TLS, and the session limits of main.
func (s SenderSmarthost) Smarthost(main Smarthost) Smarthost {
	out := main
	out.Host, out.Port, out.TLS, out.CAFile, out.Username, out.Password = s.Host, s.Port, s.TLS, s.CAFile, s.Username, s.Password
	if out.Port == 0 {
		out.Port = 587
	}
	if out.TLS == "" {
		out.TLS = smtpout.TLSStartTLS
	}
	return out
}

// SiteTLS is how this relay authenticates to other sites' relays.
type SiteTLS struct {
	TLS         string        `yaml:"tls" doc:"starttls or tls (implicit), as the other sites' inter-site listeners expect"`
	CertFile    string        `yaml:"cert_file" doc:"PEM certificate this relay presents to other sites (mutual TLS), signed by the CA the other sites' intersite.ca_file names, with this site's name as DNS name (or common name); empty: mail for other sites waits"`
	KeyFile     string        `yaml:"key_file" doc:"PEM private key of cert_file"`
	CAFile      string        `yaml:"ca_file" doc:"PEM file of the CA certificates that verify the other sites' relays"`
	MaxSessions int           `yaml:"max_sessions" doc:"most SMTP sessions open to one other site at once"`
	IdleTimeout time.Duration `yaml:"idle_timeout" doc:"how long an unused session to another site is kept open"`
}

// DefaultConfig returns the defaults: retries after 1m doubling to at most
// 4h (±20%) for 5 days, a STARTTLS smarthost on port 587 (host unset), four
// sessions at a time.
func DefaultConfig() Config {
	return Config{
		Consumers:      3,
		RetryConsumers: 1,
		Retry: RetryConfig{
			Base:        time.Minute,
			Factor:      2,
			Cap:         4 * time.Hour,
			Jitter:      0.2,
			MaxLifetime: 5 * 24 * time.Hour,
		},
		Smarthost:      DefaultSmarthost(),
		Sites:          SiteTLS{TLS: smtpout.TLSStartTLS, MaxSessions: 2, IdleTimeout: 30 * time.Second},
		DialTimeout:    30 * time.Second,
		CommandTimeout: 5 * time.Minute,
		DataTimeout:    10 * time.Minute,
		DrainTimeout:   20 * time.Second,
		IdempotencyTTL: 7 * 24 * time.Hour,
	}
}

// DefaultSmarthost is a smarthost's defaults: port 587, STARTTLS, four
// sessions kept 30s, 100 messages per session.
func DefaultSmarthost() Smarthost {
	return Smarthost{Port: 587, TLS: smtpout.TLSStartTLS, MaxSessions: 4, IdleTimeout: 30 * time.Second, MaxMessagesPerSession: 100}
}

// Validate checks the configuration; errors name the keys relative to the section.
func (c Config) Validate() error {
	var errs []error
	add := func(key, format string, args ...any) { errs = append(errs, config.Errorf(key, format, args...)) }
	if c.Consumers < 1 {
		add("consumers", "must be at least 1, got %d", c.Consumers)
	}
	if c.RetryConsumers < 1 {
		add("retry_consumers", "must be at least 1, got %d", c.RetryConsumers)
	}
	if c.Hostname != "" && !validHost(c.Hostname) {
		add("hostname", "%q is not a host name", c.Hostname)
	}
	if c.Postmaster != "" && (strings.ContainsAny(c.Postmaster, " <>\r\n\t") || !strings.Contains(c.Postmaster, "@")) {
		add("postmaster", "%q is not a mail address", c.Postmaster)
	}
	errs = append(errs, config.Prefix("retry", c.Retry.Validate()))
	errs = append(errs, config.Prefix("smarthost", c.Smarthost.Validate()))
	seen := map[string]bool{}
	for i, s := range c.SenderSmarthosts {
		key := fmt.Sprintf("sender_smarthosts[%d]", i)
		errs = append(errs, config.Prefix(key, s.Validate()))
		d := strings.ToLower(s.Domain)
		if seen[d] {
			add(key+".domain", "%q is listed twice", s.Domain)
		}
		seen[d] = true
	}
	errs = append(errs, config.Prefix("sites", c.Sites.Validate()))
	for _, p := range []struct {
		key string
		d   time.Duration
	}{{"dial_timeout", c.DialTimeout}, {"command_timeout", c.CommandTimeout}, {"data_timeout", c.DataTimeout}, {"drain_timeout", c.DrainTimeout}, {"idempotency_ttl", c.IdempotencyTTL}} {
		if p.d <= 0 {
			add(p.key, "must be positive, got %s", p.d)
		}
	}
	if c.IdempotencyTTL > 0 && c.Retry.MaxLifetime > 0 && c.IdempotencyTTL <= c.Retry.MaxLifetime {
		add("idempotency_ttl", "%s must be longer than retry.max_lifetime (%s): a redelivered record could be sent twice", c.IdempotencyTTL, c.Retry.MaxLifetime)
	}
	return config.Join(errs...)
}

// Validate checks the retry settings.
func (r RetryConfig) Validate() error {
	var errs []error
	if r.Base <= 0 {
		errs = append(errs, config.Errorf("base", "must be positive, got %s", r.Base))
	}
	if r.Cap < r.Base {
		errs = append(errs, config.Errorf("cap", "must be at least base (%s), got %s", r.Base, r.Cap))
	}
	if !(r.Factor >= 1) || math.IsInf(r.Factor, 0) {
		errs = append(errs, config.Errorf("factor", "must be a number of at least 1, got %v", r.Factor))
	} else if r.Base > 0 && r.Cap >= r.Base && r.tiersNeeded() > events.MaxRetryTiers {
		errs = append(errs, config.Errorf("factor", "%v needs %d retry tiers to grow from base %s to cap %s, more than the %d allowed: raise factor or base, or lower cap",
			r.Factor, r.tiersNeeded(), r.Base, r.Cap, events.MaxRetryTiers))
	}
	if !(r.Jitter >= 0 && r.Jitter <= 1) {
		errs = append(errs, config.Errorf("jitter", "must be between 0 and 1, got %v", r.Jitter))
	}
	if r.MaxLifetime <= 0 {
		errs = append(errs, config.Errorf("max_lifetime", "must be positive, got %s", r.MaxLifetime))
	}
	return errors.Join(errs...)
}

// tiersNeeded is the number of distinct waits from base to cap.
func (r RetryConfig) tiersNeeded() int {
	if r.Factor <= 1 || r.Base >= r.Cap {
		return 1
	}
	n := 1
	for d := float64(r.Base); d < float64(r.Cap) && n <= events.MaxRetryTiers; d *= r.Factor {
		n++
	}
	return n
}

// Tiers is the number of retry tier topics: one per distinct wait.
func (r RetryConfig) Tiers() int { return min(r.tiersNeeded(), events.MaxRetryTiers) }

// TierDelay is the wait of tier i: base·factorⁱ capped at cap.
func (r RetryConfig) TierDelay(i int) time.Duration { return backoff.Exp(r.Base, r.Cap, r.Factor, i+1) }

// Tier is the tier of the wait after failed attempt n (from 1).
func (r RetryConfig) Tier(n int) int { return min(max(n-1, 0), r.Tiers()-1) }

// Delay is the wait after failed attempt n (from 1): the tier's wait spread
// by ±jitter (u is a uniform random number in [0,1)), capped at cap.
func (r RetryConfig) Delay(n int, u float64) time.Duration {
	return min(backoff.Jitter(r.TierDelay(r.Tier(n)), r.Jitter, u), r.Cap)
}

// Validate checks a smarthost. An empty host is valid (no smarthost).
func (s Smarthost) Validate() error {
	var errs []error
	add := func(key, format string, args ...any) { errs = append(errs, config.Errorf(key, format, args...)) }
	if s.Host != "" && !validHost(s.Host) {
		add("host", "%q is not a host name or address", s.Host)
	}
	if s.Port < 1 || s.Port > 65535 {
		add("port", "must be between 1 and 65535, got %d", s.Port)
	}
	switch s.TLS {
	case smtpout.TLSStartTLS, smtpout.TLSImplicit:
	case smtpout.TLSNone:
		if s.Username != "" || s.Password.IsSet() {
			add("tls", "none would send the AUTH password in clear: use starttls or tls, or no username")
		}
	default:
		add("tls", "%q: must be %q, %q or %q", s.TLS, smtpout.TLSStartTLS, smtpout.TLSImplicit, smtpout.TLSNone)
	}
	if s.Username != "" && !s.Password.IsSet() {
		add("password", "must be set with username")
	}
	if s.Username == "" && s.Password.IsSet() {
		add("username", "must be set with password")
	}
	if s.MaxSessions < 1 {
		add("max_sessions", "must be at least 1, got %d", s.MaxSessions)
	}
	if s.IdleTimeout <= 0 {
		add("idle_timeout", "must be positive, got %s", s.IdleTimeout)
	}
	if s.MaxMessagesPerSession < 0 {
		add("max_messages_per_session", "must not be negative, got %d", s.MaxMessagesPerSession)
	}
	return errors.Join(errs...)
}

// Validate checks a sender domain's smarthost, which needs a domain and a host.
func (s SenderSmarthost) Validate() error {
	var errs []error
	if s.Domain == "" || !validHost(s.Domain) {
		errs = append(errs, config.Errorf("domain", "%q is not a domain", s.Domain))
	}
	if s.Host == "" {
		errs = append(errs, config.Errorf("host", "must be set"))
	}
	return errors.Join(append(errs, s.Smarthost(DefaultSmarthost()).Validate())...)
}

// Validate checks the inter-site settings: the certificate, key and CA
// come together or not at all.
func (s SiteTLS) Validate() error {
	var errs []error
	switch s.TLS {
	case smtpout.TLSStartTLS, smtpout.TLSImplicit:
	default:
		errs = append(errs, config.Errorf("tls", "%q: must be %q or %q (delivery to other sites is always encrypted)", s.TLS, smtpout.TLSStartTLS, smtpout.TLSImplicit))
	}
	set := 0
	for _, f := range []string{s.CertFile, s.KeyFile, s.CAFile} {
		if f != "" {
			set++
		}
	}
	if set != 0 && set != 3 {
		for _, f := range []struct{ key, v string }{{"cert_file", s.CertFile}, {"key_file", s.KeyFile}, {"ca_file", s.CAFile}} {
			if f.v == "" {
				errs = append(errs, config.Errorf(f.key, "must be set with the other TLS files (cert_file, key_file, ca_file)"))
			}
		}
	}
	if s.MaxSessions < 1 {
		errs = append(errs, config.Errorf("max_sessions", "must be at least 1, got %d", s.MaxSessions))
	}
	if s.IdleTimeout <= 0 {
		errs = append(errs, config.Errorf("idle_timeout", "must be positive, got %s", s.IdleTimeout))
	}
	return errors.Join(errs...)
}

// validHost accepts a DNS name or an IP address (no port).
func validHost(h string) bool { return net.ParseIP(h) != nil || config.IsHostname(h) }
