package pop3

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// Errors reported by the client. Match them with errors.Is (and the typed
// errors below with errors.As).
var (
	// ErrTooLarge: RetrLimit refused a message larger than the limit.
	ErrTooLarge = errors.New("message too large")
	// ErrClosed: the connection was closed (by Close, Quit, or after an
	// error that left it unusable).
	ErrClosed = errors.New("pop3: connection closed")
	// ErrReaderOpen: a command was issued while the reader of a RETR or TOP
	// had neither reached its end nor been closed.
	ErrReaderOpen = errors.New("pop3: the previous RETR/TOP reader is still open")
	// ErrFingerprint: the server's certificate does not match Options.Fingerprint.
	ErrFingerprint = errors.New("server certificate does not match the pinned fingerprint")
	// ErrAuthUnsupported: the chosen authentication method is not possible
	// with this server (e.g. APOP without a timestamp in the greeting).
	ErrAuthUnsupported = errors.New("authentication method not offered by the server")
)

// Error is a -ERR reply. Command is the command that was refused, e.g.
// "RETR 3" or "PASS"; it never contains a password or SASL response.
// Code is the RFC 2449 extended response code, e.g. "IN-USE",
// "LOGIN-DELAY", "SYS/TEMP", "SYS/PERM" or "AUTH" (empty without one); Text
// is the server's text after "-ERR " (including any "[CODE]").
type Error struct {
	Command string
	Code    string
	Text    string
}

func (e *Error) Error() string {
	return fmt.Sprintf("%s: server replied -ERR %s", strings.ToLower(e.Command), e.Text)
}

// Temporary reports whether the server says the condition may go away by
// itself (RFC 2449/3206 codes IN-USE, LOGIN-DELAY and SYS/TEMP). Other -ERR
// replies, among them a wrong password ([AUTH] or no code), are not.
func (e *Error) Temporary() bool {
	switch e.Code {
	case "IN-USE", "LOGIN-DELAY", "SYS/TEMP":
		return true
	}
	return false
}

// ProtocolError is a reply the client cannot understand: a status line
// without +OK or -ERR, a malformed LIST/UIDL line, an over-long line. The
// connection is closed: its state is unknown.
type ProtocolError struct {
	Command string
	Line    string // the offending line, possibly truncated
	Reason  string
}

func (e *ProtocolError) Error() string {
	return fmt.Sprintf("%s: protocol error: %s: %q", strings.ToLower(e.Command), e.Reason, e.Line)
}

// ConnError is a failure of the connection during a command: lost (it
// unwraps to io.ErrUnexpectedEOF), timed out (Timeout() is true; it
// unwraps to os.ErrDeadlineExceeded) or aborted by the context (it unwraps
// to the context's error). Bytes counts the message bytes delivered by a
// RETR or TOP before the failure (0 for other commands). The connection is
// closed.
type ConnError struct {
	Command string
	Bytes   int64
	Err     error
	ctxErr  bool
	timeout bool
}

func (e *ConnError) Error() string {
	what := "connection lost"
	switch {
	case e.ctxErr:
		what = "aborted"
	case e.timeout:
		what = "timed out"
	}
	msg := fmt.Sprintf("%s: %s after %d bytes", strings.ToLower(e.Command), what, e.Bytes)
	if e.Err != nil && e.Err != io.ErrUnexpectedEOF && e.Err != io.EOF {
		msg += ": " + e.Err.Error()
	}
	return msg
}

// Unwrap returns io.ErrUnexpectedEOF for a lost connection, and the
// underlying error.
func (e *ConnError) Unwrap() []error {
	if e.ctxErr || e.timeout {
		return []error{e.Err}
	}
	return []error{io.ErrUnexpectedEOF, e.Err}
}

// Timeout reports whether the server did not answer in time.
func (e *ConnError) Timeout() bool { return e.timeout }

// Temporary is always true: a lost connection is worth retrying later.
func (e *ConnError) Temporary() bool { return true }

type status int

const (
	statusOK status = iota
	statusErr
	statusCont // "+ " SASL continuation
)

// reply is a parsed status line.
type reply struct {
	status status
	code   string // RFC 2449 response code, without brackets
	text   string // the text after the status indicator
}

// parseReply parses a status line (without its CRLF): "+OK[ text]",
// "-ERR[ text]", or, if cont is true, a SASL continuation "+[ base64]".
// Status indicators are matched case-insensitively.
func parseReply(line []byte, cont bool) (reply, error) {
	var r reply
	var rest []byte
	switch {
	case hasPrefixFold(line, "+OK"):
		r.status, rest = statusOK, line[3:]
	case hasPrefixFold(line, "-ERR"):
		r.status, rest = statusErr, line[4:]
	case cont && len(line) > 0 && line[0] == '+':
		r.status, rest = statusCont, line[1:]
	default:
		return r, errors.New("reply is neither +OK nor -ERR")
	}
	if len(rest) > 0 {
		if rest[0] != ' ' && rest[0] != '\t' {
			return r, errors.New("no space after the status indicator")
		}
		rest = rest[1:]
	}
	r.text = string(rest)
	if r.status != statusCont && len(rest) > 0 && rest[0] == '[' {
		if i := bytes.IndexByte(rest, ']'); i > 1 {
			r.code = strings.ToUpper(string(rest[1:i]))
		}
	}
	return r, nil
}

func hasPrefixFold(b []byte, prefix string) bool {
	return len(b) >= len(prefix) && strings.EqualFold(string(b[:len(prefix)]), prefix)
}

// parseListLine parses a scan listing ("n size") from LIST, or a
// unique-id listing ("n uid") from UIDL when uidl is true.
func parseListLine(line []byte, uidl bool) (num int, size int64, uid string, err error) {
	f := bytes.Fields(line)
	if len(f) < 2 {
		return 0, 0, "", errors.New("want two fields")
	}
	num, err = strconv.Atoi(string(f[0]))
	if err != nil || num < 1 {
		return 0, 0, "", errors.New("bad message number")
	}
	if uidl {
		uid = string(f[1])
		for _, c := range f[1] {
			if c < 0x21 || c > 0x7e {
				return 0, 0, "", errors.New("unique-id with a character outside 0x21-0x7E")
			}
		}
		return num, 0, uid, nil
	}
	size, err = strconv.ParseInt(string(f[1]), 10, 64)
	if err != nil || size < 0 {
		return 0, 0, "", errors.New("bad size")
	}
	return num, size, "", nil
}

// parseStat parses the text of a STAT reply: "count size".
func parseStat(text string) (count int, size int64, err error) {
	f := strings.Fields(text)
	if len(f) < 2 {
		return 0, 0, errors.New("want count and size")
	}
	count, err1 := strconv.Atoi(f[0])
	size, err2 := strconv.ParseInt(f[1], 10, 64)
	if err1 != nil || err2 != nil || count < 0 || size < 0 {
		return 0, 0, errors.New("bad count or size")
	}
	return count, size, nil
}

// Capabilities are the server's CAPA reply (RFC 2449): capability name in
// upper case → its parameters (e.g. "SASL" → ["PLAIN", "LOGIN"]).
type Capabilities map[string][]string

// Has reports whether the server announced the capability name.
func (c Capabilities) Has(name string) bool {
	_, ok := c[strings.ToUpper(name)]
	return ok
}

// HasParam reports whether capability name has parameter p (case-insensitive),
// e.g. HasParam("SASL", "PLAIN").
func (c Capabilities) HasParam(name, p string) bool {
	for _, v := range c[strings.ToUpper(name)] {
		if strings.EqualFold(v, p) {
			return true
		}
	}
	return false
}

func (c Capabilities) add(line []byte) {
	f := strings.Fields(string(line))
	if len(f) == 0 {
		return
	}
	c[strings.ToUpper(f[0])] = f[1:]
}

// apopTimestamp returns the RFC 1939 timestamp ("<...>") in a greeting's
// text, or "".
func apopTimestamp(text string) string {
	i := strings.IndexByte(text, '<')
	if i < 0 {
		return ""
	}
	j := strings.IndexByte(text[i:], '>')
	if j < 0 {
		return ""
	}
	ts := text[i : i+j+1]
	if !strings.Contains(ts, "@") || strings.ContainsAny(ts, " \t") {
		return ""
	}
	return ts
}
