package smtpin

import (
	"bytes"
	"regexp"
	"strings"
	"testing"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// TestResendGetsTheSameID: a message sent again on a new connection by
// the same user — as a mail client does when the connection broke before
// it read the 250 — gets the same mail.inbound id, so the router's
// idempotency keys drop the copy; another envelope, another sender
// address, one byte more, or no Message-ID gives another id.
func TestResendGetsTheSameID(t *testing.T) {
	e := start(t, nil)
	msg := message("resend")
	rcpts := []string{"bob@example.com", "Someone@Internet.test"}

	type sent struct {
		name  string
		from  string
		rcpts []string
		msg   []byte
	}
	var sends []sent
	submit := func(name string, c *smtp.Client, from string, rcpts []string, msg []byte) {
		t.Helper()
		if err := send(c, from, rcpts, msg); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		sends = append(sends, sent{name, from, rcpts, msg})
		_ = c.Quit()
	}
	// The same message three times, each on a new connection: STARTTLS on
	// 587 twice, implicit TLS on 465 once.
	submit("first", e.submit("alice", alicePW), "alice@example.com", rcpts, msg)
	submit("again on 587", e.submit("alice", alicePW), "alice@example.com", rcpts, msg)
	c465, err := smtp.DialTLS(e.addr(ListenerSubmissions), e.clientTLS())
	if err != nil {
		t.Fatal(err)
	}
	if err := c465.Hello("another-name.test"); err != nil {
		t.Fatal(err)
	}
	if err := c465.Auth(sasl.NewPlainClient("", "alice", alicePW)); err != nil {
		t.Fatal(err)
	}
	submit("again on 465", c465, "alice@example.com", rcpts, msg)

	// Not the same message.
	oneByte := bytes.Replace(bytes.Clone(msg), []byte("Hello Bob,"), []byte("Hello Bob,!"), 1)
	changed := bytes.Replace(bytes.Clone(msg), []byte("Hello Bob"), []byte("Hello Bod"), 1)
	noID := []byte("From: Alice <alice@example.com>\r\nTo: Bob <bob@example.com>\r\nSubject: alert\r\n\r\nDisk full.\r\n")
	submit("recipients in another order", e.submit("alice", alicePW), "alice@example.com", []string{rcpts[1], rcpts[0]}, msg)
	submit("one recipient fewer", e.submit("alice", alicePW), "alice@example.com", rcpts[:1], msg)
	submit("another sender address", e.submit("alice", alicePW), "a.archer@example.com", rcpts, msg)
	submit("one byte more", e.submit("alice", alicePW), "alice@example.com", rcpts, oneByte)
	submit("one byte changed", e.submit("alice", alicePW), "alice@example.com", rcpts, changed)
	submit("no Message-ID", e.submit("alice", alicePW), "alice@example.com", rcpts[:1], noID)
	submit("no Message-ID again", e.submit("alice", alicePW), "alice@example.com", rcpts[:1], noID)

	got := e.collect(len(sends))
	// The records in the order of sends: records of one id interleave
	// freely with others, so each send is matched by its envelope and
	// bytes (the three copies of the first are alike but for their
	// session).
	ids := map[string][]string{} // send name → ids of the records matching it
	sessions := map[string]bool{}
	idPattern := regexp.MustCompile(`^[a-z2-7]{26}$`)
	for _, in := range got {
		received, rest := splitReceived(t, in.Message)
		if !strings.Contains(received, " id "+in.ID) {
			t.Errorf("Received field %q does not name id %s", received, in.ID)
		}
		if !idPattern.MatchString(in.ID) {
			t.Errorf("id %q is not 26 lower-case base32 characters", in.ID)
		}
		if sessions[in.Source.SMTPSession] {
			t.Errorf("session %s on two records", in.Source.SMTPSession)
		}
		sessions[in.Source.SMTPSession] = true
		matched := false
		for _, s := range sends {
			if s.from == in.MailFrom && strings.Join(s.rcpts, ",") == strings.Join(in.Recipients, ",") && bytes.Equal(s.msg, rest) {
				ids[s.name] = append(ids[s.name], in.ID)
				matched = true
				break // the first send of alike ones takes them all
			}
		}
		if !matched {
			t.Errorf("record %s matches no send: from %q to %q", in.ID, in.MailFrom, in.Recipients)
		}
	}
	first := ids["first"]
	if len(first) != 3 {
		t.Fatalf("the message sent three times: %d records, want 3 (%v)", len(first), ids)
	}
	if first[0] != first[1] || first[0] != first[2] {
		t.Errorf("the same message sent again on new connections got ids %v, want one id", first)
	}
	seen := map[string]string{first[0]: "first"}
	for _, name := range []string{"recipients in another order", "one recipient fewer", "another sender address", "one byte more", "one byte changed"} {
		if len(ids[name]) != 1 {
			t.Errorf("%s: %d records, want 1", name, len(ids[name]))
			continue
		}
		id := ids[name][0]
		if other, ok := seen[id]; ok {
			t.Errorf("%s: id %s, the same as %s's", name, id, other)
		}
		seen[id] = name
	}
	if n := ids["no Message-ID"]; len(n) != 2 || n[0] == n[1] {
		t.Errorf("a message without a Message-ID sent twice: ids %v, want two different", n)
	}
}

// TestDerivedIDFields: every part of the derivation makes a difference.
func TestDerivedIDFields(t *testing.T) {
	body := message("fields")
	rcpts := []string{"bob@example.com"}
	base := derivedID(hq, kindSubmission, "u-alice", "alice@example.com", rcpts, body)
	if again := derivedID(hq, kindSubmission, "u-alice", "alice@example.com", []string{"bob@example.com"}, bytes.Clone(body)); again != base {
		t.Errorf("the same inputs: %s then %s", base, again)
	}
	for name, id := range map[string]string{
		"another site":                 derivedID(branch, kindSubmission, "u-alice", "alice@example.com", rcpts, body),
		"the inbound listener":         derivedID(hq, kindInbound, "", "alice@example.com", rcpts, body),
		"the inter-site listener":      derivedID(hq, kindIntersite, "site:branch", "alice@example.com", rcpts, body),
		"another user":                 derivedID(hq, kindSubmission, "u-zs", "alice@example.com", rcpts, body),
		"no user":                      derivedID(hq, kindSubmission, "", "alice@example.com", rcpts, body),
		"the null sender":              derivedID(hq, kindSubmission, "u-alice", "", rcpts, body),
		"a recipient more":             derivedID(hq, kindSubmission, "u-alice", "alice@example.com", []string{"bob@example.com", "bob@example.com"}, body),
		"fields shifted between parts": derivedID(hq, kindSubmission, "u-alice", "alice@example.combob@example.com", nil, body),
		"a byte less":                  derivedID(hq, kindSubmission, "u-alice", "alice@example.com", rcpts, body[:len(body)-1]),
	} {
		if id == base {
			t.Errorf("%s: the same id %s", name, id)
		}
	}
}

func TestHasMessageID(t *testing.T) {
	for _, c := range []struct {
		msg  string
		want bool
	}{
		{"Message-ID: <a@b>\r\n\r\nbody\r\n", true},
		{"From: a@b\r\nmessage-id:\r\n <folded@b>\r\n\r\nbody\r\n", true},
		{"From: a@b\nMESSAGE-ID: <lf@b>\n\nbody\n", true},
		{"From: a@b\r\nMessage-ID:   \r\n\r\nbody\r\n", false},
		{"From: a@b\r\nSubject: x\r\n\r\nMessage-ID: <in-the-body@b>\r\n", false},
		{"From: a@b\r\nResent-Message-ID: <r@b>\r\n\r\n", false},
		{"no header at all", false},
		{"", false},
	} {
		if got := hasMessageID([]byte(c.msg)); got != c.want {
			t.Errorf("hasMessageID(%q) = %v, want %v", c.msg, got, c.want)
		}
	}
}
