package smtpin

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/postern/postern/internal/config"
)

// Listener names: the keys of [Server.Addrs], the "listener" label of the
// metrics and the keys of the configuration.
const (
	ListenerSubmission  = "submission"  // 587: STARTTLS, then AUTH; LAN users send mail
	ListenerSubmissions = "submissions" // 465: the same over implicit TLS
	ListenerInbound     = "inbound"     // 25: mail for the organisation's domains, no AUTH
	ListenerIntersite   = "intersite"   // mail from another site's relay, mutual TLS
)

// TLS modes of the inter-site listener.
const (
	TLSModeStartTLS = "starttls" // plain greeting, STARTTLS before anything else
	TLSModeImplicit = "tls"      // TLS from the first byte
)

// Config is the configuration of the relay's SMTP servers.
type Config struct {
	Hostname        string          `yaml:"hostname" doc:"the name the SMTP servers give in their greeting and Received header fields (and the name of a generated certificate); empty: the machine's host name"`
	Submission      ListenerConfig  `yaml:"submission" doc:"message submission for the site's users (RFC 6409): STARTTLS, then AUTH PLAIN or LOGIN with the directory password; a user sends only as their own addresses or a shared mailbox they staff"`
	Submissions     ListenerConfig  `yaml:"submissions" doc:"message submission over implicit TLS (RFC 8314, usually port 465); off while listen is empty"`
	Inbound         ListenerConfig  `yaml:"inbound" doc:"inbound SMTP (the MX, usually port 25): mail for the organisation's domains only, no AUTH; STARTTLS offered"`
	Intersite       IntersiteConfig `yaml:"intersite" doc:"mail from other sites' relays, authenticated with a client certificate; off while listen is empty"`
	TLS             TLSConfig       `yaml:"tls" doc:"the servers' certificate"`
	MaxMessageBytes int64           `yaml:"max_message_bytes" doc:"the largest message accepted, in bytes (advertised with SIZE; larger ones are refused with 552 5.3.4); capped by bus.max_record_bytes less room for the Received header"`
	MaxRecipients   int             `yaml:"max_recipients" doc:"recipients accepted per message; more get 452 4.5.3 (the client sends the rest in another transaction)"`
	TrustedNetworks []string        `yaml:"trusted_networks" doc:"CIDR prefixes (or single addresses) whose clients may relay through the inbound listener without AUTH and use the organisation's domains as sender; empty (the default) trusts no one, not even the LAN or 127.0.0.1"`
	Timeouts        TimeoutConfig   `yaml:"timeouts" doc:"time limits of a session"`
	RateLimits      RateLimitConfig `yaml:"rate_limits" doc:"messages per client address and per user (counted at MAIL FROM in the site state, shared by every relay of the site); over the limit MAIL FROM gets 451 4.7.1"`
	AuthLockout     LockoutConfig   `yaml:"auth_lockout" doc:"locking out password guessers: after this many failed AUTH attempts for one user, or from one client address, within the window, every AUTH for that user or from that address is refused (even with the right password) until the window ends"`
}

// ListenerConfig is one SMTP listener.
type ListenerConfig struct {
	Listen         string `yaml:"listen" doc:"host:port to listen on; empty: off"`
	MaxConnections int    `yaml:"max_connections" doc:"simultaneous connections; more are answered 421 4.7.0 and closed"`
}

// IntersiteConfig is the listener for other sites' relays.
type IntersiteConfig struct {
	ListenerConfig `yaml:",inline"`
	TLSMode        string `yaml:"tls_mode" doc:"starttls (plain greeting, STARTTLS required before MAIL) or tls (implicit TLS)"`
	CAFile         string `yaml:"ca_file" doc:"PEM file of the certificate authorities that sign the sites' relay certificates. A client certificate signed by one of them whose DNS name (or, without DNS names, common name) is the name of a site in the directory authenticates that site. Required when the listener is on; when set, the inbound listener also accepts such certificates (so a site may send to another site's port 25)"`
}

// TLSConfig is the servers' certificate.
type TLSConfig struct {
	CertFile   string `yaml:"cert_file" doc:"PEM certificate chain of the SMTP servers"`
	KeyFile    string `yaml:"key_file" doc:"PEM private key of cert_file"`
	SelfSigned bool   `yaml:"self_signed" doc:"when cert_file and key_file are empty: use a self-signed certificate for hostname, generated at the first start into data_dir and reused afterwards (single box; clients must be told to trust it)"`
	DataDir    string `yaml:"data_dir" doc:"where the self-signed certificate and key are kept (cert.pem, key.pem)"`
}

// TimeoutConfig bounds every phase of a session.
type TimeoutConfig struct {
	Command time.Duration `yaml:"command" doc:"the longest wait for the client's next command or next piece of message data, and for a reply to be written; also bounds publishing a message (RFC 5321 asks for at least 5m)"`
	Session time.Duration `yaml:"session" doc:"the longest a whole connection may last, whatever it does"`
	Drain   time.Duration `yaml:"drain" doc:"on stop: how long messages being received may take to finish before their connections are cut (idle connections are closed at once with 421)"`
}

// RateLimitConfig limits how fast clients send.
type RateLimitConfig struct {
	MessagesPerIPPerMinute int `yaml:"messages_per_ip_per_minute" doc:"transactions (MAIL FROM) per client IP address and minute on submission and inbound; 0: no limit"`
	MessagesPerUserPerHour int `yaml:"messages_per_user_per_hour" doc:"transactions (MAIL FROM) per authenticated user and hour; 0: no limit"`
}

// LockoutConfig is the AUTH lockout.
type LockoutConfig struct {
	MaxFailuresPerUser int           `yaml:"max_failures_per_user" doc:"failed AUTH attempts for one user within window before it is locked; 0: no per-user lockout"`
	MaxFailuresPerIP   int           `yaml:"max_failures_per_ip" doc:"failed AUTH attempts from one client IP address within window before it is locked; 0: no per-address lockout"`
	Window             time.Duration `yaml:"window" doc:"the fixed window attempts are counted in, opened by the first failed attempt; a lockout ends with the window that reached the limit"`
}

// DefaultConfig is the single-box default: submission and inbound on
// unprivileged loopback ports (set listen to ":587" and ":25" to serve the
// LAN and the Internet), implicit-TLS submission and the inter-site listener
// off, a self-signed certificate under var/relay/tls.
func DefaultConfig() Config {
	return Config{
		Submission:      ListenerConfig{Listen: "127.0.0.1:2587", MaxConnections: 100},
		Submissions:     ListenerConfig{MaxConnections: 100},
		Inbound:         ListenerConfig{Listen: "127.0.0.1:2525", MaxConnections: 100},
		Intersite:       IntersiteConfig{ListenerConfig: ListenerConfig{MaxConnections: 50}, TLSMode: TLSModeStartTLS},
		TLS:             TLSConfig{SelfSigned: true, DataDir: "var/relay/tls"},
		MaxMessageBytes: 25 << 20,
		MaxRecipients:   100,
		Timeouts:        TimeoutConfig{Command: 5 * time.Minute, Session: time.Hour, Drain: 20 * time.Second},
		RateLimits:      RateLimitConfig{MessagesPerIPPerMinute: 120, MessagesPerUserPerHour: 1000},
		AuthLockout:     LockoutConfig{MaxFailuresPerUser: 5, MaxFailuresPerIP: 20, Window: 15 * time.Minute},
	}
}

// Validate checks the configuration; errors are *config.FieldError values
// naming keys relative to the section.
func (c Config) Validate() error {
	var errs []error
	add := func(key, format string, args ...any) { errs = append(errs, config.Errorf(key, format, args...)) }
	if c.Hostname != "" && !config.IsHostname(c.Hostname) {
		add("hostname", "%q is not a host name", c.Hostname)
	}
	listeners := []struct {
		key string
		l   ListenerConfig
	}{
		{ListenerSubmission, c.Submission},
		{ListenerSubmissions, c.Submissions},
		{ListenerInbound, c.Inbound},
		{ListenerIntersite, c.Intersite.ListenerConfig},
	}
	on := 0
	seen := map[string]string{}
	for _, l := range listeners {
		if l.l.Listen == "" {
			continue
		}
		on++
		if _, port, err := net.SplitHostPort(l.l.Listen); err != nil || port == "" {
			add(l.key+".listen", "%q is not host:port", l.l.Listen)
		} else if other, dup := seen[l.l.Listen]; dup && !strings.HasSuffix(l.l.Listen, ":0") {
			add(l.key+".listen", "%s is also the address of %s", l.l.Listen, other)
		} else {
			seen[l.l.Listen] = l.key
		}
		if l.l.MaxConnections < 1 {
			add(l.key+".max_connections", "must be at least 1, got %d", l.l.MaxConnections)
		}
	}
	if on == 0 {
		add("submission.listen", "every listener is off: set at least one listen address")
	}
	if c.Intersite.TLSMode != TLSModeStartTLS && c.Intersite.TLSMode != TLSModeImplicit {
		add("intersite.tls_mode", "must be %q or %q, got %q", TLSModeStartTLS, TLSModeImplicit, c.Intersite.TLSMode)
	}
	if c.Intersite.Listen != "" && c.Intersite.CAFile == "" {
		add("intersite.ca_file", "required when intersite.listen is set: the CA that signs the sites' certificates")
	}
	switch {
	case (c.TLS.CertFile == "") != (c.TLS.KeyFile == ""):
		add("tls.cert_file", "cert_file and key_file go together: set both or neither")
	case c.TLS.CertFile == "" && !c.TLS.SelfSigned:
		add("tls.cert_file", "required (submission needs TLS), or set tls.self_signed")
	case c.TLS.CertFile == "" && c.TLS.DataDir == "":
		add("tls.data_dir", "required for a self-signed certificate")
	}
	if c.MaxMessageBytes < 1024 {
		add("max_message_bytes", "must be at least 1024, got %d", c.MaxMessageBytes)
	}
	if c.MaxRecipients < 1 {
		add("max_recipients", "must be at least 1, got %d", c.MaxRecipients)
	}
	for i, n := range c.TrustedNetworks {
		if _, err := parsePrefix(n); err != nil {
			add(fmt.Sprintf("trusted_networks[%d]", i), "%v", err)
		}
	}
	if c.Timeouts.Command <= 0 {
		add("timeouts.command", "must be positive, got %s", c.Timeouts.Command)
	}
	if c.Timeouts.Session < c.Timeouts.Command {
		add("timeouts.session", "must be at least timeouts.command (%s), got %s", c.Timeouts.Command, c.Timeouts.Session)
	}
	if c.Timeouts.Drain <= 0 {
		add("timeouts.drain", "must be positive, got %s", c.Timeouts.Drain)
	}
	if c.RateLimits.MessagesPerIPPerMinute < 0 {
		add("rate_limits.messages_per_ip_per_minute", "must not be negative, got %d", c.RateLimits.MessagesPerIPPerMinute)
	}
	if c.RateLimits.MessagesPerUserPerHour < 0 {
		add("rate_limits.messages_per_user_per_hour", "must not be negative, got %d", c.RateLimits.MessagesPerUserPerHour)
	}
	if c.AuthLockout.MaxFailuresPerUser < 0 {
		add("auth_lockout.max_failures_per_user", "must not be negative, got %d", c.AuthLockout.MaxFailuresPerUser)
	}
	if c.AuthLockout.MaxFailuresPerIP < 0 {
		add("auth_lockout.max_failures_per_ip", "must not be negative, got %d", c.AuthLockout.MaxFailuresPerIP)
	}
	if (c.AuthLockout.MaxFailuresPerUser > 0 || c.AuthLockout.MaxFailuresPerIP > 0) && c.AuthLockout.Window <= 0 {
		add("auth_lockout.window", "must be positive, got %s", c.AuthLockout.Window)
	}
	return errors.Join(errs...)
}

// parsePrefix reads a CIDR prefix or a single address.
func parsePrefix(s string) (netip.Prefix, error) {
	s = strings.TrimSpace(s)
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("%q is not a CIDR prefix (like 192.168.1.0/24)", s)
		}
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is not an address or CIDR prefix (like 192.168.1.0/24)", s)
	}
	a = a.Unmap()
	return netip.PrefixFrom(a, a.BitLen()), nil
}
