package testenv

// Minimal POP3, IMAP and LMTP clients for testing the Dovecot harness. They
// keep the server's bytes exactly (CRLF included) so messages can be compared
// byte for byte, and every connection has a deadline.

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/textproto"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

const protoTimeout = 15 * time.Second

func dial(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func dialUntrusted(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := DialUntrusted(addr)
	if err != nil {
		t.Fatalf("dial %s from 127.0.0.2: %v", addr, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func dialTLS(t *testing.T, addr string, conf *tls.Config) net.Conn {
	t.Helper()
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, conf)
	if err != nil {
		t.Fatalf("TLS dial %s: %v", addr, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// readLine reads one line including its CRLF.
func readLine(t *testing.T, r *bufio.Reader) []byte {
	t.Helper()
	line, err := r.ReadBytes('\n')
	if err != nil {
		t.Fatalf("read: %v (got %q)", err, line)
	}
	return line
}

// ---- POP3 ----------------------------------------------------------------

type pop3Client struct {
	t        *testing.T
	conn     net.Conn
	r        *bufio.Reader
	greeting string
}

func newPOP3(t *testing.T, conn net.Conn) *pop3Client {
	t.Helper()
	conn.SetDeadline(time.Now().Add(protoTimeout))
	c := &pop3Client{t: t, conn: conn, r: bufio.NewReader(conn)}
	c.greeting = c.line()
	if !strings.HasPrefix(c.greeting, "+OK") {
		t.Fatalf("POP3 greeting %q", c.greeting)
	}
	return c
}

func (c *pop3Client) line() string {
	c.t.Helper()
	return strings.TrimRight(string(readLine(c.t, c.r)), "\r\n")
}

// cmd sends a command and returns the status line.
func (c *pop3Client) cmd(format string, args ...any) string {
	c.t.Helper()
	if _, err := fmt.Fprintf(c.conn, format+"\r\n", args...); err != nil {
		c.t.Fatalf("POP3 write: %v", err)
	}
	return c.line()
}

func (c *pop3Client) ok(format string, args ...any) string {
	c.t.Helper()
	resp := c.cmd(format, args...)
	if !strings.HasPrefix(resp, "+OK") {
		c.t.Fatalf("POP3 %q: %q", fmt.Sprintf(format, args...), resp)
	}
	return resp
}

// multi sends a command with a multi-line answer and returns the answer's
// body with the dot-stuffing removed and CRLFs kept.
func (c *pop3Client) multi(format string, args ...any) []byte {
	c.t.Helper()
	c.ok(format, args...)
	var body []byte
	for {
		line := readLine(c.t, c.r)
		if string(line) == ".\r\n" {
			return body
		}
		if line[0] == '.' {
			line = line[1:]
		}
		body = append(body, line...)
	}
}

func (c *pop3Client) login(user, pass string) {
	c.t.Helper()
	c.ok("USER %s", user)
	c.ok("PASS %s", pass)
}

func (c *pop3Client) startTLS(conf *tls.Config) {
	c.t.Helper()
	c.ok("STLS")
	if c.r.Buffered() != 0 {
		c.t.Fatalf("POP3 data after STLS reply")
	}
	tc := tls.Client(c.conn, conf)
	if err := tc.Handshake(); err != nil {
		c.t.Fatalf("POP3 STLS handshake: %v", err)
	}
	c.conn, c.r = tc, bufio.NewReader(tc)
}

func (c *pop3Client) quit() {
	c.t.Helper()
	c.ok("QUIT")
}

// ---- IMAP ----------------------------------------------------------------

type imapClient struct {
	t        *testing.T
	conn     net.Conn
	r        *bufio.Reader
	tag      int
	greeting string
}

// imapResponse is one server response; literals are cut out of text (which
// keeps their {n} markers) into literals.
type imapResponse struct {
	text     string
	literals [][]byte
}

var literalRE = regexp.MustCompile(`\{(\d+)\+?\}\r\n$`)

func newIMAP(t *testing.T, conn net.Conn) *imapClient {
	t.Helper()
	conn.SetDeadline(time.Now().Add(protoTimeout))
	c := &imapClient{t: t, conn: conn, r: bufio.NewReader(conn)}
	c.greeting = c.response().text
	if !strings.HasPrefix(c.greeting, "* OK") {
		t.Fatalf("IMAP greeting %q", c.greeting)
	}
	return c
}

func (c *imapClient) response() imapResponse {
	c.t.Helper()
	var resp imapResponse
	var text strings.Builder
	for {
		line := readLine(c.t, c.r)
		m := literalRE.FindSubmatch(line)
		if m == nil {
			text.Write(bytes.TrimRight(line, "\r\n"))
			resp.text = text.String()
			return resp
		}
		text.Write(bytes.TrimRight(line, "\r\n"))
		n, _ := strconv.Atoi(string(m[1]))
		lit := make([]byte, n)
		if _, err := io.ReadFull(c.r, lit); err != nil {
			c.t.Fatalf("IMAP literal: %v", err)
		}
		resp.literals = append(resp.literals, lit)
	}
}

// cmd sends a tagged command and returns the untagged responses and the
// tagged status ("OK ...", "NO ...", "BAD ...").
func (c *imapClient) cmd(format string, args ...any) (untagged []imapResponse, status string) {
	c.t.Helper()
	c.tag++
	tag := fmt.Sprintf("t%d", c.tag)
	if _, err := fmt.Fprintf(c.conn, tag+" "+format+"\r\n", args...); err != nil {
		c.t.Fatalf("IMAP write: %v", err)
	}
	for {
		resp := c.response()
		if rest, ok := strings.CutPrefix(resp.text, tag+" "); ok {
			return untagged, rest
		}
		untagged = append(untagged, resp)
	}
}

func (c *imapClient) ok(format string, args ...any) []imapResponse {
	c.t.Helper()
	untagged, status := c.cmd(format, args...)
	if !strings.HasPrefix(status, "OK") {
		c.t.Fatalf("IMAP %q: %q", fmt.Sprintf(format, args...), status)
	}
	return untagged
}

func (c *imapClient) login(user, pass string) {
	c.t.Helper()
	c.ok("LOGIN %s %s", imapQuote(user), imapQuote(pass))
}

// exists selects INBOX and returns its EXISTS count.
func (c *imapClient) selectInbox() int {
	c.t.Helper()
	return existsCount(c.t, c.ok("SELECT INBOX"))
}

func existsCount(t *testing.T, untagged []imapResponse) int {
	t.Helper()
	n := -1
	for _, r := range untagged {
		var k int
		if _, err := fmt.Sscanf(r.text, "* %d EXISTS", &k); err == nil {
			n = k
		}
	}
	return n
}

// fetchBody returns BODY.PEEK[] of message seq, the message exactly as
// stored.
func (c *imapClient) fetchBody(seq int) []byte {
	c.t.Helper()
	untagged := c.ok("FETCH %d BODY.PEEK[]", seq)
	for _, r := range untagged {
		if strings.HasPrefix(r.text, fmt.Sprintf("* %d FETCH ", seq)) && strings.Contains(r.text, "BODY[] {") && len(r.literals) == 1 {
			return r.literals[0]
		}
	}
	c.t.Fatalf("IMAP FETCH %d: no BODY[] literal in %+v", seq, untagged)
	return nil
}

func (c *imapClient) startTLS(conf *tls.Config) {
	c.t.Helper()
	c.ok("STARTTLS")
	if c.r.Buffered() != 0 {
		c.t.Fatalf("IMAP data after STARTTLS reply")
	}
	tc := tls.Client(c.conn, conf)
	if err := tc.Handshake(); err != nil {
		c.t.Fatalf("IMAP STARTTLS handshake: %v", err)
	}
	c.conn, c.r = tc, bufio.NewReader(tc)
}

func (c *imapClient) logout() {
	c.t.Helper()
	c.ok("LOGOUT")
}

func imapQuote(s string) string {
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s) + `"`
}

// ---- LMTP ----------------------------------------------------------------

// lmtpDeliver sends msg from one envelope sender to rcpts over LMTP. It
// returns the reply code to each RCPT TO and, for the accepted recipients in
// order, the reply code after DATA.
func lmtpDeliver(t *testing.T, addr, from string, rcpts []string, msg []byte) (rcptCodes, dataCodes []int) {
	t.Helper()
	conn := dial(t, addr)
	conn.SetDeadline(time.Now().Add(protoTimeout))
	tp := textproto.NewConn(conn)
	expect := func(want int) {
		t.Helper()
		if _, msg, err := tp.ReadResponse(want); err != nil {
			t.Fatalf("LMTP: want %d: %v %s", want, err, msg)
		}
	}
	send := func(format string, args ...any) {
		t.Helper()
		if err := tp.PrintfLine(format, args...); err != nil {
			t.Fatalf("LMTP write: %v", err)
		}
	}
	expect(220)
	send("LHLO testenv.example")
	expect(250)
	send("MAIL FROM:<%s> BODY=8BITMIME", from)
	expect(250)
	accepted := 0
	for _, rcpt := range rcpts {
		send("RCPT TO:<%s>", rcpt)
		code, _, err := tp.ReadResponse(0)
		if err != nil && code == 0 {
			t.Fatalf("LMTP RCPT TO:<%s>: %v", rcpt, err)
		}
		rcptCodes = append(rcptCodes, code)
		if code/100 == 2 {
			accepted++
		}
	}
	if accepted == 0 {
		send("QUIT")
		return rcptCodes, nil
	}
	send("DATA")
	expect(354)
	// Dot-stuff by hand so that the bytes on the wire are exactly msg's.
	w := tp.W
	for line := range bytes.Lines(msg) {
		if line[0] == '.' {
			w.WriteByte('.')
		}
		w.Write(line)
	}
	if !bytes.HasSuffix(msg, []byte("\r\n")) {
		w.WriteString("\r\n")
	}
	w.WriteString(".\r\n")
	if err := w.Flush(); err != nil {
		t.Fatalf("LMTP DATA: %v", err)
	}
	for range accepted {
		code, text, err := tp.ReadResponse(0)
		if err != nil && code == 0 {
			t.Fatalf("LMTP DATA reply: %v", err)
		}
		t.Logf("LMTP DATA: %d %s", code, text)
		dataCodes = append(dataCodes, code)
	}
	send("QUIT")
	return rcptCodes, dataCodes
}
