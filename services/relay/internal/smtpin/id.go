package smtpin

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/base32"
	"encoding/binary"
	"hash"
	"strings"

	"github.com/emersion/go-message/textproto"
)

// The inbound id of a message accepted over SMTP, and why it is derived
// from the message rather than drawn at random.
//
// SMTP has a duplicate window no server can close on its own (RFC 1047):
// the relay publishes the message to mail.inbound, the broker acknowledges
// it, and the relay dies (or the connection breaks) before the client reads
// the 250. The client does not know the message was taken and sends it
// again — on a new connection, often to a relay process started anew. With
// a random id per acceptance the router saw two messages and every
// recipient got two copies.
//
// So the id names the message, not the acceptance: a SHA-256 over
//
//   - a version tag and the site;
//   - the listener kind (submission, inbound, inter-site): the same bytes
//     submitted by a user and relayed from outside are not one message;
//   - the sender's identity as the relay authenticated it: the user id on
//     submission, "site:<name>" for another site's relay (its client
//     certificate), nothing for unauthenticated inbound mail. The client's
//     IP address and port, HELO name and SMTP session are left out on
//     purpose: a resend comes on a new connection (a new port, a new
//     session id), and a sending MTA retries from whichever address of its
//     pool is free (or over IPv6 after IPv4), so any of them would defeat
//     the purpose. For anonymous inbound mail this lets anyone who knows a
//     message byte for byte and its envelope send it first and have the
//     genuine one dropped as a copy — but then the recipients already got
//     exactly those bytes, only with other trace fields;
//   - the envelope: MAIL FROM and the RCPT TO addresses in the order they
//     were given, exactly as the client wrote them;
//   - the message's bytes exactly as the client sent them (after dot
//     unstuffing), before the relay prepends its Received field — which
//     names the session, the client's address and the time, and so differs
//     between the two acceptances.
//
// Same identity, same envelope, same bytes: that is "the same message".
// The router's idempotency keys are derived from the inbound id
// (route:<delivery id>, whose delivery ids are "<inbound id>:local:<user>"
// and so on; route:status:<inbound id>:<rcpt>; the DSN ids), and so are the
// relay's Maildir markers and sent: keys, so the second acceptance is
// routed to outputs that exist already and is dropped — by the router when
// the first was routed, by the relay's final delivery otherwise. Both
// records have the same Kafka key (the id), so they land on one partition
// and are routed in order.
//
// The consequence: a message deliberately sent twice, byte for byte the
// same with the same envelope, within the idempotency keys' lifetime
// (router.idempotency_ttl, 7 days by default) is delivered once. That is
// what RFC 5322 asks of a Message-ID — one message, one id — and mail
// clients write a new Message-ID and Date for every message they compose.
// A message without a Message-ID field claims no such identity (scripts
// and devices that send the same alert text again and again do that), so
// it keeps a random id: each acceptance is a message of its own, and the
// duplicate window stays open for it.
//
// What stays per acceptance: the SMTP session id, the client's address and
// HELO (postern-smtp-* headers), the received-at time and the Received
// field. A trace by inbound id lists the message once, with the source of
// the acceptance whose statuses it saw first.

// idVersion starts every derived id's hash; change it only with the
// derivation.
const idVersion = "postern-smtp-inbound-id-v1"

// idEncoding writes ids as the random ones are written: lower-case base32
// without padding (26 characters for 16 bytes).
var idEncoding = base32.StdEncoding.WithPadding(base32.NoPadding)

// kindName names a listener kind in the id derivation.
func kindName(k kind) string {
	switch k {
	case kindSubmission:
		return "submission"
	case kindInbound:
		return "inbound"
	case kindIntersite:
		return "intersite"
	}
	return "unknown"
}

// inboundID returns the mail.inbound id of the message body the session is
// accepting, whose sender authenticated as authUser ("" when it did not):
// derived from the message when it has a Message-ID field (see above), a
// random one otherwise.
func (s *session) inboundID(authUser string, body []byte) string {
	if !hasMessageID(body) {
		return newMessageID()
	}
	return derivedID(s.srv.deps.Site, s.kind, authUser, s.from, s.rcpts, body)
}

// derivedID is the hash of the derivation above: 128 bits of SHA-256 as 26
// lower-case base32 characters. Every field is length-prefixed, so no two
// different inputs write the same stream.
func derivedID(site string, k kind, authUser, from string, rcpts []string, body []byte) string {
	h := sha256.New()
	field(h, []byte(idVersion))
	field(h, []byte(site))
	field(h, []byte(kindName(k)))
	field(h, []byte(authUser))
	field(h, []byte(from))
	var n [8]byte
	binary.BigEndian.PutUint64(n[:], uint64(len(rcpts)))
	h.Write(n[:])
	for _, r := range rcpts {
		field(h, []byte(r))
	}
	field(h, body)
	return strings.ToLower(idEncoding.EncodeToString(h.Sum(nil)[:16]))
}

// field writes b to h after its length.
func field(h hash.Hash, b []byte) {
	var n [8]byte
	binary.BigEndian.PutUint64(n[:], uint64(len(b)))
	h.Write(n[:])
	h.Write(b)
}

// hasMessageID reports whether the message's header holds a Message-ID
// field with a value. A header that cannot be read counts as none.
func hasMessageID(msg []byte) bool {
	hdr, err := textproto.ReadHeader(bufio.NewReader(bytes.NewReader(msg)))
	if err != nil {
		return false
	}
	return strings.TrimSpace(hdr.Get("Message-Id")) != ""
}
