// Package mailbox is the final, local delivery of the relay: it puts one
// message into one user's mailbox, either by writing it into the user's
// Maildir (the layout Dovecot reads with mail_location =
// maildir:<root>/%u) or by handing it to Dovecot over LMTP.
//
// Both deliverers prepend the envelope as two header fields and otherwise
// keep the message byte for byte:
//
//	Return-Path: <sender@example.org>     (<> for the null sender)
//	Delivered-To: alice@example.com       (the envelope recipient)
//
// (Over LMTP, Dovecot writes the Return-Path itself from MAIL FROM, and must
// be told not to add its own Delivered-To: see deployments/dovecot.)
// The line ends of the added fields follow the message's (CRLF unless its
// first line ends in a bare LF).
//
// Delivery is idempotent by Message.DeliveryID: delivering the same id
// twice leaves one message in the mailbox, also across a crash at any point
// (see Maildir and LMTP for how, and for the small windows that remain).
//
// Every error is temporary (worth retrying) unless IsPermanent says
// otherwise: a bad user name, a header-breaking envelope, an LMTP 5xx reply.
package mailbox

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os/user"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/postern/postern/internal/config"
	"github.com/postern/postern/internal/sitestate"
)

// Message is one message for one mailbox.
type Message struct {
	// DeliveryID is the idempotency key: the same id delivered twice
	// leaves one message. It is the mail.delivery record's id.
	DeliveryID string
	// Username is the mailbox owner's user name: the Dovecot login and the
	// name of the Maildir under the root. It is compared in ASCII lower
	// case, as Dovecot does (auth_username_format = %Lu).
	Username string
	// Recipient is the envelope recipient address, written as Delivered-To.
	Recipient string
	// MailFrom is the envelope sender, written as Return-Path; "" is the
	// null sender (Return-Path: <>).
	MailFrom string
	// Data is the message as routed (RFC 5322, CRLF line ends).
	Data []byte
}

// Deliverer puts messages into mailboxes. Deliver is safe for concurrent
// use; it returns nil once the message is durably in the mailbox (or was
// already). Close releases connections and waits for background work; no
// Deliver may be running or follow.
type Deliverer interface {
	Deliver(ctx context.Context, m Message) error
	Close() error
}

// Kinds of deliverer.
const (
	KindMaildir = "maildir"
	KindLMTP    = "lmtp"
)

// Config chooses and configures the local deliverer.
type Config struct {
	Kind    string        `yaml:"kind" doc:"maildir (write the mailboxes directly) or lmtp (hand messages to Dovecot)"`
	Maildir MaildirConfig `yaml:"maildir" doc:"Maildir delivery (kind maildir)"`
	LMTP    LMTPConfig    `yaml:"lmtp" doc:"LMTP delivery (kind lmtp)"`
}

// DefaultConfig returns the single-box defaults: Maildir under var/mail.
func DefaultConfig() Config {
	return Config{
		Kind: KindMaildir,
		Maildir: MaildirConfig{
			Root:            "var/mail",
			MarkerRetention: 30 * 24 * time.Hour,
		},
		LMTP: LMTPConfig{
			Address:        "127.0.0.1:24",
			Timeout:        2 * time.Minute,
			MaxConnections: 4,
			IdempotencyTTL: 30 * 24 * time.Hour,
		},
	}
}

// Validate checks the settings of the chosen kind; errors are
// *config.FieldError naming keys relative to the section ("kind",
// "maildir.root").
func (c Config) Validate() error {
	switch c.Kind {
	case KindMaildir:
		return config.Prefix("maildir", c.Maildir.Validate())
	case KindLMTP:
		return config.Prefix("lmtp", c.LMTP.Validate())
	default:
		return config.Errorf("kind", "%q: must be %q or %q", c.Kind, KindMaildir, KindLMTP)
	}
}

// Options are what a deliverer gets from the running relay rather than
// from configuration.
type Options struct {
	// State holds the LMTP deliverer's idempotency keys (required for
	// kind lmtp; the Maildir deliverer keeps its own markers on disk).
	State sitestate.Idempotency
	// Logger receives delivery logs; nil discards them.
	Logger *slog.Logger
	// Hostname names this host in Maildir file names and in LHLO;
	// empty: os.Hostname().
	Hostname string
	// Now returns the current time; nil: time.Now.
	Now func() time.Time
}

// New builds the deliverer cfg chooses.
func New(cfg Config, opts Options) (Deliverer, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("mailbox: %w", err)
	}
	switch cfg.Kind {
	case KindLMTP:
		return NewLMTP(cfg.LMTP, opts)
	default:
		return NewMaildir(cfg.Maildir, opts)
	}
}

// permanentError marks an error that retrying cannot fix.
type permanentError struct{ err error }

func (e *permanentError) Error() string { return e.err.Error() }
func (e *permanentError) Unwrap() error { return e.err }

func permanent(err error) error { return &permanentError{err} }

func permanentf(format string, args ...any) error {
	return permanent(fmt.Errorf(format, args...))
}

// IsPermanent reports whether err is a permanent failure: the message can
// never be delivered as it is (bounce it); any other error is temporary
// (retry later). Errors from an LMTP server's reply wrap its
// *smtp.SMTPError (errors.As), whose code and text belong in a bounce.
func IsPermanent(err error) bool {
	var p *permanentError
	return errors.As(err, &p)
}

// checkMessage validates what goes into headers and file names, and returns
// the user name as Dovecot sees it (ASCII lower case).
func checkMessage(m Message) (string, error) {
	if m.DeliveryID == "" {
		return "", permanentf("mailbox: empty delivery id")
	}
	name, err := CanonicalUsername(m.Username)
	if err != nil {
		return "", permanent(err)
	}
	if err := checkHeaderValue("recipient", m.Recipient, false); err != nil {
		return "", permanent(err)
	}
	if err := checkHeaderValue("sender", m.MailFrom, true); err != nil {
		return "", permanent(err)
	}
	return name, nil
}

// CanonicalUsername returns username in ASCII lower case (Dovecot's
// default auth_username_format = %Lu), or an error if it cannot name a
// mailbox directory directly below the Maildir root: empty, longer than 255
// bytes, not UTF-8, starting with '.', or containing '/', '\', ':' or a
// control character or space.
func CanonicalUsername(username string) (string, error) {
	switch {
	case username == "":
		return "", errors.New("mailbox: empty user name")
	case len(username) > 255:
		return "", fmt.Errorf("mailbox: user name of %d bytes is too long", len(username))
	case !utf8.ValidString(username):
		return "", fmt.Errorf("mailbox: user name %q is not valid UTF-8", username)
	case strings.HasPrefix(username, "."):
		return "", fmt.Errorf("mailbox: user name %q starts with '.'", username)
	}
	for _, r := range username {
		if r <= ' ' || r == 0x7f || (r >= 0x80 && r < 0xa0) || r == '/' || r == '\\' || r == ':' {
			return "", fmt.Errorf("mailbox: user name %q contains %q", username, r)
		}
	}
	b := []byte(username)
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b), nil
}

// checkHeaderValue refuses an address that would break the header it is
// written into.
func checkHeaderValue(what, v string, mayBeEmpty bool) error {
	if v == "" && !mayBeEmpty {
		return fmt.Errorf("mailbox: empty %s address", what)
	}
	if len(v) > 1000 {
		return fmt.Errorf("mailbox: %s address of %d bytes is too long", what, len(v))
	}
	if strings.ContainsAny(v, "\r\n\x00<>") {
		return fmt.Errorf("mailbox: %s address %q contains a line break, NUL or angle bracket", what, v)
	}
	return nil
}

// lineEnd is the line end the message uses: LF if its first line ends in a
// bare LF, CRLF otherwise.
func lineEnd(data []byte) string {
	if i := bytes.IndexByte(data, '\n'); i >= 0 && (i == 0 || data[i-1] != '\r') {
		return "\n"
	}
	return "\r\n"
}

// envelopeHeader returns the fields prepended to m.Data.
func envelopeHeader(m Message, returnPath bool) []byte {
	eol := lineEnd(m.Data)
	var b bytes.Buffer
	if returnPath {
		b.WriteString("Return-Path: <" + m.MailFrom + ">" + eol)
	}
	b.WriteString("Delivered-To: " + m.Recipient + eol)
	return b.Bytes()
}

func (o Options) now() time.Time {
	if o.Now != nil {
		return o.Now()
	}
	return time.Now()
}

func (o Options) logger() *slog.Logger {
	if o.Logger != nil {
		return o.Logger
	}
	return slog.New(slog.DiscardHandler)
}

// lookupOwner resolves "user", "user:group", "uid:gid" or "uid" (a group
// defaults to the user's primary group).
func lookupOwner(s string) (uid, gid int, err error) {
	uname, gname, hasGroup := strings.Cut(s, ":")
	if uname == "" || (hasGroup && gname == "") {
		return 0, 0, fmt.Errorf("owner %q: want user, user:group or uid:gid", s)
	}
	if n, err := strconv.Atoi(uname); err == nil && n >= 0 {
		uid, gid = n, -1
	} else {
		u, err := user.Lookup(uname)
		if err != nil {
			return 0, 0, fmt.Errorf("owner %q: %w", s, err)
		}
		uid, _ = strconv.Atoi(u.Uid)
		gid, _ = strconv.Atoi(u.Gid)
	}
	if hasGroup {
		if n, err := strconv.Atoi(gname); err == nil && n >= 0 {
			gid = n
		} else {
			g, err := user.LookupGroup(gname)
			if err != nil {
				return 0, 0, fmt.Errorf("owner %q: %w", s, err)
			}
			gid, _ = strconv.Atoi(g.Gid)
		}
	}
	if gid < 0 {
		u, err := user.LookupId(strconv.Itoa(uid))
		if err != nil {
			return 0, 0, fmt.Errorf("owner %q: no group given and uid %d has no passwd entry: %w", s, uid, err)
		}
		gid, _ = strconv.Atoi(u.Gid)
	}
	return uid, gid, nil
}
