// Package trace is the router's message trace: an operator follows one
// message through the site — where it came from, how each recipient was
// routed and every delivery outcome — from the records of mail.status.
//
// The Indexer consumes mail.status (its own consumer group) and appends each
// status to the site state's trace index under the message's Message-ID and
// its inbound id; the Handler answers GET /v1/trace on the router's side
// HTTP server with a Document; Fetch is the client `postern trace` uses.
package trace

import (
	"cmp"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/postern/postern/api/events"
	"github.com/postern/postern/internal/config"
	"github.com/postern/postern/internal/sitestate"
)

// Path is the trace endpoint on the router's side HTTP server.
const Path = "/v1/trace"

// Defaults of Config.
const (
	DefaultRetention  = 14 * 24 * time.Hour
	DefaultMaxRecords = 1000
)

// Config is the router's trace section.
type Config struct {
	Enabled       bool          `yaml:"enabled" doc:"index mail.status in the site state so that postern trace and GET /v1/trace on the side server can follow a message"`
	Retention     time.Duration `yaml:"retention" doc:"how long a message's trace is kept after its last status record (at least 1h)"`
	MaxRecords    int           `yaml:"max_records" doc:"most status records kept per Message-ID and per inbound id (1 to 100000); past it the oldest are dropped and the trace says how many"`
	ConsumerGroup string        `yaml:"consumer_group" doc:"Kafka consumer group of the trace indexer (one per site, apart from the routing group); empty: postern-<site>-router-trace"`
	Token         config.Secret `yaml:"token" doc:"bearer token GET /v1/trace requires (Authorization: Bearer <token>; postern trace sends it from $POSTERN_TRACE_TOKEN): at least 16 characters of letters, digits and - . _ ~ + / (then =), e.g. head -c32 /dev/urandom | base64. Empty: no authentication, which the router refuses unless router.http.listen is a loopback address (or tracing is off)"`
}

// DefaultConfig is on, 14 days, 1,000 records.
func DefaultConfig() Config {
	return Config{Enabled: true, Retention: DefaultRetention, MaxRecords: DefaultMaxRecords}
}

// Validate checks the section; keys are relative ("retention").
func (c Config) Validate() error {
	var errs []error
	if c.Retention < time.Hour {
		errs = append(errs, config.Errorf("retention", "must be at least 1h, got %s", c.Retention))
	}
	if c.MaxRecords < 1 || c.MaxRecords > sitestate.MaxTraceEntries {
		errs = append(errs, config.Errorf("max_records", "must be 1 to %d, got %d", sitestate.MaxTraceEntries, c.MaxRecords))
	}
	if strings.ContainsAny(c.ConsumerGroup, " \t\r\n") {
		errs = append(errs, config.Errorf("consumer_group", "%q contains white space", c.ConsumerGroup))
	}
	if c.Token.IsSet() {
		if err := checkToken(c.Token.Reveal()); err != nil {
			errs = append(errs, config.Errorf("token", "%v", err))
		}
	}
	return config.Join(errs...)
}

// MinTokenLength is the shortest router.trace.token accepted.
const MinTokenLength = 16

// checkToken checks the shape of a trace token without ever quoting it: a
// bearer token of RFC 6750 (b64token: letters, digits, - . _ ~ + /, then
// any =), at least MinTokenLength characters.
func checkToken(t string) error {
	if len(t) < MinTokenLength {
		return fmt.Errorf("must be at least %d characters (make one with: head -c32 /dev/urandom | base64)", MinTokenLength)
	}
	body := strings.TrimRight(t, "=")
	if body == "" || strings.IndexFunc(body, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-._~+/", r))
	}) >= 0 {
		return fmt.Errorf("may hold only letters, digits and - . _ ~ + / (then =): it is sent as an HTTP bearer token")
	}
	return nil
}

func (c Config) policy() sitestate.TracePolicy {
	return sitestate.TracePolicy{TTL: c.Retention, MaxEntries: c.MaxRecords}
}

// maxInboundID bounds an inbound id asked for.
const maxInboundID = 256

// MessageIDKey is the trace index key of a Message-ID: "msgid:" and the ID
// normalised (angle brackets and surrounding space removed, domain
// lower-cased; see sitestate.NormalizeMessageID). It also returns the
// normalised ID.
func MessageIDKey(messageID string) (key, normalised string, err error) {
	id, err := sitestate.NormalizeMessageID(messageID)
	if err != nil {
		return "", "", err
	}
	return "msgid:" + id, id, nil
}

// InboundKey is the trace index key of an inbound id: "inbound:" and the id
// as it is (up to 256 bytes of printable UTF-8 without spaces).
func InboundKey(inboundID string) (string, error) {
	switch {
	case inboundID == "":
		return "", fmt.Errorf("%w: empty inbound id", sitestate.ErrInvalid)
	case len(inboundID) > maxInboundID:
		return "", fmt.Errorf("%w: inbound id longer than %d bytes", sitestate.ErrInvalid, maxInboundID)
	case !utf8.ValidString(inboundID):
		return "", fmt.Errorf("%w: inbound id is not UTF-8", sitestate.ErrInvalid)
	case strings.IndexFunc(inboundID, func(r rune) bool { return unicode.IsSpace(r) || !unicode.IsPrint(r) }) >= 0:
		return "", fmt.Errorf("%w: inbound id %q holds spaces or control characters", sitestate.ErrInvalid, inboundID)
	}
	return "inbound:" + inboundID, nil
}

// ---------------------------------------------------------------------------
// The document

// Document is the answer of GET /v1/trace: what one site knows of a
// message, from its mail.status records.
type Document struct {
	// Site is the site that answered.
	Site string `json:"site"`
	// MessageID is the Message-ID asked for, normalised (no angle
	// brackets); empty when asked by inbound id.
	MessageID string `json:"message_id,omitempty"`
	// InboundID is the inbound id asked for; empty when asked by
	// Message-ID.
	InboundID string `json:"inbound_id,omitempty"`
	// Dropped counts older status records no longer kept
	// (router.trace.max_records).
	Dropped int64 `json:"dropped,omitempty"`
	// Messages has one entry per mail.inbound record (a message entering
	// the site), in the order of their first status (then inbound id).
	Messages []Message `json:"messages"`
}

// Message is one mail.inbound record: one arrival of the message at the
// site.
type Message struct {
	InboundID string `json:"inbound_id"`
	MessageID string `json:"message_id,omitempty"`
	Source    Source `json:"source"`
	// ReceivedAt is when the edge (the fetcher's download, the SMTP
	// listener) accepted the message; zero when its status records are
	// older than the field.
	ReceivedAt time.Time `json:"received_at,omitzero"`
	// FirstAt and LastAt bound the message's status records.
	FirstAt time.Time `json:"first_at"`
	LastAt  time.Time `json:"last_at"`
	// Recipients are the final recipients, in the order of their first
	// status (the router's before the relay's of the same moment, then by
	// address).
	Recipients []Recipient `json:"recipients"`
}

// Source is where a message entered Postern.
type Source struct {
	Kind        string `json:"kind"` // pop3 or smtp
	POP3Account string `json:"pop3_account,omitempty"`
	POP3UIDL    string `json:"pop3_uidl,omitempty"`
	SMTPSession string `json:"smtp_session,omitempty"`
	SMTPRemote  string `json:"smtp_remote,omitempty"`
	SMTPHelo    string `json:"smtp_helo,omitempty"`
	AuthUser    string `json:"auth_user,omitempty"` // the authenticated user's id (submission)
}

// Recipient is how one recipient was routed and what became of it.
type Recipient struct {
	Recipient string `json:"recipient"`
	// OriginalRecipient is the address the sender used (before alias,
	// group and shared-mailbox expansion), when it differs.
	OriginalRecipient string `json:"original_recipient,omitempty"`
	// Destination is where the router sent it: local (a mailbox here),
	// site (another site's relay) or outbound (the smarthost); empty when
	// the router refused it.
	Destination string `json:"destination,omitempty"`
	// State is the outcome of the latest event: delivered, deferred,
	// bounced or rejected.
	State string `json:"state"`
	// Events are the outcomes in time order.
	Events []Event `json:"events"`
}

// Event is one mail.status record.
type Event struct {
	At          time.Time `json:"at"`
	Stage       string    `json:"stage"` // router or relay
	Outcome     string    `json:"outcome"`
	Attempt     int       `json:"attempt,omitempty"`
	SMTPCode    int       `json:"smtp_code,omitempty"`
	Reason      string    `json:"reason,omitempty"`
	NextAttempt time.Time `json:"next_attempt,omitzero"`
	Destination string    `json:"destination,omitempty"`
	DeliveryID  string    `json:"delivery_id,omitempty"`
}

// outcomeRank orders events of one moment and attempt: a deferral comes
// before the final outcome.
func outcomeRank(o string) int {
	switch o {
	case events.OutcomeDeferred:
		return 0
	case events.OutcomeDelivered:
		return 1
	default:
		return 2
	}
}

// stageRank puts the router's statuses before the relay's of the same
// moment: routing comes first.
func stageRank(s string) int {
	if s == "router" {
		return 0
	}
	return 1
}

func compareEvents(a, b Event) int {
	return cmp.Or(a.At.Compare(b.At), cmp.Compare(a.Attempt, b.Attempt), cmp.Compare(stageRank(a.Stage), stageRank(b.Stage)),
		cmp.Compare(outcomeRank(a.Outcome), outcomeRank(b.Outcome)), strings.Compare(a.DeliveryID, b.DeliveryID))
}

// compareRecipients orders recipients by their first event, then name.
func compareRecipients(a, b Recipient) int {
	return cmp.Or(compareEvents(a.Events[0], b.Events[0]), strings.Compare(a.Recipient, b.Recipient))
}

func sourceOf(s events.Source) Source {
	return Source{Kind: s.Kind, POP3Account: s.POP3Account, POP3UIDL: s.POP3UIDL, SMTPSession: s.SMTPSession,
		SMTPRemote: s.SMTPRemote, SMTPHelo: s.SMTPHelo, AuthUser: s.AuthUser}
}

// build groups the statuses of a trace list (in time order) by inbound
// record and recipient. Entries that do not decode are skipped (they were
// written by another version) and counted in skipped.
func build(entries []sitestate.TraceEntry) (msgs []Message, skipped int) {
	byInbound := map[string]*Message{}
	var order []string
	rcptIndex := map[string]map[string]int{} // inbound → lower-cased recipient → index
	for _, e := range entries {
		var st events.Status
		if err := json.Unmarshal(e.Data, &st); err != nil || st.InboundID == "" || st.Recipient == "" {
			skipped++
			continue
		}
		m := byInbound[st.InboundID]
		if m == nil {
			m = &Message{InboundID: st.InboundID, FirstAt: st.At.UTC()}
			byInbound[st.InboundID] = m
			rcptIndex[st.InboundID] = map[string]int{}
			order = append(order, st.InboundID)
		}
		if m.MessageID == "" && st.MessageID != "" {
			if _, id, err := MessageIDKey(st.MessageID); err == nil {
				m.MessageID = id
			}
		}
		if m.Source.Kind == "" {
			m.Source = sourceOf(st.Source)
		}
		if m.ReceivedAt.IsZero() && !st.ReceivedAt.IsZero() {
			m.ReceivedAt = st.ReceivedAt.UTC()
		}
		at := st.At.UTC()
		if at.Before(m.FirstAt) {
			m.FirstAt = at
		}
		if at.After(m.LastAt) {
			m.LastAt = at
		}
		key := strings.ToLower(st.Recipient)
		i, ok := rcptIndex[st.InboundID][key]
		if !ok {
			i = len(m.Recipients)
			rcptIndex[st.InboundID][key] = i
			m.Recipients = append(m.Recipients, Recipient{Recipient: st.Recipient})
		}
		r := &m.Recipients[i]
		if r.OriginalRecipient == "" && st.OriginalRecipient != "" && !strings.EqualFold(st.OriginalRecipient, st.Recipient) {
			r.OriginalRecipient = st.OriginalRecipient
		}
		if st.Destination != "" {
			r.Destination = st.Destination
		}
		ev := Event{At: at, Stage: st.Stage, Outcome: st.Outcome, Attempt: st.Attempt, SMTPCode: st.SMTPCode,
			Reason: st.Reason, Destination: st.Destination, DeliveryID: st.DeliveryID}
		if !st.NextAttempt.IsZero() {
			ev.NextAttempt = st.NextAttempt.UTC()
		}
		r.Events = append(r.Events, ev)
	}
	msgs = make([]Message, 0, len(order))
	for _, id := range order {
		m := byInbound[id]
		for i := range m.Recipients {
			r := &m.Recipients[i]
			slices.SortStableFunc(r.Events, compareEvents)
			r.State = r.Events[len(r.Events)-1].Outcome
		}
		slices.SortStableFunc(m.Recipients, compareRecipients)
		msgs = append(msgs, *m)
	}
	slices.SortStableFunc(msgs, func(a, b Message) int {
		return cmp.Or(a.FirstAt.Compare(b.FirstAt), strings.Compare(a.InboundID, b.InboundID))
	})
	return msgs, skipped
}
