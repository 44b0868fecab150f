package pop3

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"testing"
	"time"
)

func dialFake(t *testing.T, s *fakeServer, opts Options) *Client {
	t.Helper()
	if s.t == nil {
		s.t = t
	}
	addr := s.start()
	if opts.Timeout == 0 {
		opts.Timeout = 10 * time.Second
	}
	c, err := Dial(t.Context(), addr, opts)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// readAll returns a function that reads a Retr/Top reply to its end:
// readAll(t)(c.Retr(ctx, n)).
func readAll(t testing.TB) func(io.ReadCloser, error) []byte {
	return func(r io.ReadCloser, err error) []byte {
		t.Helper()
		return readAllErr(t, r, err)
	}
}

func readAllErr(t testing.TB, r io.ReadCloser, err error) []byte {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	return b
}

var fakeMsgs = [][]byte{
	[]byte("Subject: one\r\n\r\n.hidden\r\n..\r\n.\r\nend\r\n"),
	[]byte("Subject: two\r\n\r\nbody\r\n"),
	[]byte("Subject: three\r\n\r\nline 1\r\nline 2\r\nline 3\r\n"),
}

func TestFakeNoCapaNoPipelining(t *testing.T) {
	s := &fakeServer{user: "u", pass: "p", msgs: fakeMsgs}
	c := dialFake(t, s, Options{})
	ctx := t.Context()
	if c.Capabilities() != nil {
		t.Errorf("Capabilities = %v, want nil without CAPA", c.Capabilities())
	}
	if err := c.Auth(ctx, "u", "p", Auto); err != nil {
		t.Fatal(err)
	}
	msgs, err := c.UIDL(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := []MessageInfo{{1, int64(len(fakeMsgs[0])), "uid-1"}, {2, int64(len(fakeMsgs[1])), "uid-2"}, {3, int64(len(fakeMsgs[2])), "uid-3"}}
	if fmt.Sprint(msgs) != fmt.Sprint(want) {
		t.Errorf("UIDL = %v, want %v", msgs, want)
	}
	for i, m := range fakeMsgs {
		r, err := c.Retr(ctx, i+1)
		if got := readAllErr(t, r, err); !bytes.Equal(got, m) {
			t.Errorf("RETR %d = %q, want %q", i+1, got, m)
		}
	}
	if err := c.Dele(ctx, 1, 3); err != nil {
		t.Fatal(err)
	}
	if n, size, err := c.Stat(ctx); err != nil || n != 1 || size != int64(len(fakeMsgs[1])) {
		t.Errorf("Stat = %d, %d, %v", n, size, err)
	}
	if err := c.Rset(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.Quit(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.Noop(ctx); !errors.Is(err, ErrClosed) {
		t.Errorf("Noop after Quit = %v, want ErrClosed", err)
	}
	got := strings.Join(s.received(), "|")
	if want := "CAPA|USER u|PASS p|LIST|UIDL|RETR 1|RETR 2|RETR 3|DELE 1|DELE 3|STAT|RSET|QUIT"; got != want {
		t.Errorf("commands %s, want %s", got, want)
	}
}

// TestFakePipelining checks that with PIPELINING the commands of UIDL and
// of a DELE batch are sent before the first reply is read.
func TestFakePipelining(t *testing.T) {
	s := &fakeServer{user: "u", pass: "p", msgs: fakeMsgs, caps: []string{"USER", "UIDL", "PIPELINING"}}
	var notPipelined []string
	s.handle = func(fc *fakeConn, cmd string, args []string) bool {
		if (cmd == "LIST" && len(args) == 0) || (cmd == "DELE" && args[0] != "3") {
			if fc.r.Buffered() == 0 {
				notPipelined = append(notPipelined, cmd)
			}
		}
		return false
	}
	c := dialFake(t, s, Options{})
	ctx := t.Context()
	if err := c.Auth(ctx, "u", "p", User); err != nil {
		t.Fatal(err)
	}
	if _, err := c.UIDL(ctx); err != nil {
		t.Fatal(err)
	}
	// DELE 9 fails; the others are still marked.
	err := c.Dele(ctx, 1, 9, 2, 3)
	var pe *Error
	if !errors.As(err, &pe) || pe.Command != "DELE 9" {
		t.Fatalf("Dele = %v, want *Error for DELE 9", err)
	}
	if n, _, err := c.Stat(ctx); err != nil || n != 0 {
		t.Errorf("Stat = %d, %v; want 0 messages left", n, err)
	}
	if len(notPipelined) > 0 {
		t.Errorf("not pipelined: %v", notPipelined)
	}
}

func TestFakeAPOP(t *testing.T) {
	s := &fakeServer{greeting: "+OK POP3 ready <1896.697170952@dbc.mtview.ca.us>", user: "mrose", pass: "tanstaaf", msgs: fakeMsgs}
	c := dialFake(t, s, Options{})
	if err := c.Auth(t.Context(), "mrose", "tanstaaf", Auto); err != nil {
		t.Fatal(err)
	}
	// RFC 1939's example digest.
	if got := s.received()[1]; got != "APOP mrose c4c9334bac560ecc979e58001b3e22fb" {
		t.Errorf("sent %q", got)
	}

	c2 := dialFake(t, &fakeServer{greeting: s.greeting, user: "mrose", pass: "tanstaaf"}, Options{})
	err := c2.Auth(t.Context(), "mrose", "wrong", APOP)
	var pe *Error
	if !errors.As(err, &pe) || pe.Command != "APOP mrose" || pe.Code != "AUTH" || pe.Temporary() {
		t.Errorf("wrong APOP password: %v", err)
	}
	if err := c2.Noop(t.Context()); err != nil {
		t.Errorf("Noop after -ERR: %v", err)
	}

	c3 := dialFake(t, &fakeServer{user: "u", pass: "p"}, Options{})
	if err := c3.Auth(t.Context(), "u", "p", APOP); !errors.Is(err, ErrAuthUnsupported) {
		t.Errorf("APOP without timestamp: %v", err)
	}
}

func TestFakeAuthPlainContinuation(t *testing.T) {
	long := strings.Repeat("x", 300) // too long for an initial response
	s := &fakeServer{user: "u", pass: long, caps: []string{"SASL PLAIN"}}
	c := dialFake(t, s, Options{})
	if err := c.Auth(t.Context(), "u", long, Auto); err != nil {
		t.Fatal(err)
	}
	if got := s.received()[1]; got != "AUTH PLAIN" {
		t.Errorf("sent %q, want AUTH PLAIN without initial response", got)
	}
	c2 := dialFake(t, &fakeServer{user: "u", pass: "p", caps: []string{"SASL PLAIN"}}, Options{})
	err := c2.Auth(t.Context(), "u", "secret-password", Plain)
	var pe *Error
	if !errors.As(err, &pe) || pe.Command != "AUTH PLAIN" || strings.Contains(err.Error(), "secret-password") {
		t.Errorf("wrong password: %v", err)
	}
}

func TestFakeERR(t *testing.T) {
	s := &fakeServer{user: "u", pass: "p", msgs: fakeMsgs, caps: []string{"TOP", "UIDL"}}
	s.handle = func(fc *fakeConn, cmd string, args []string) bool {
		if cmd == "UIDL" {
			fc.send("-ERR [SYS/TEMP] uidl unavailable")
			return true
		}
		return false
	}
	c := dialFake(t, s, Options{})
	ctx := t.Context()
	err := c.Auth(ctx, "u", "hunter2", User)
	var pe *Error
	if !errors.As(err, &pe) || pe.Command != "PASS" || pe.Code != "AUTH" || pe.Text != "[AUTH] invalid password" {
		t.Fatalf("wrong password: %#v", err)
	}
	if strings.Contains(err.Error(), "hunter2") {
		t.Errorf("error %q contains the password", err)
	}
	if err.Error() != "pass: server replied -ERR [AUTH] invalid password" {
		t.Errorf("error text %q", err)
	}
	if err := c.Auth(ctx, "u", "p", User); err != nil {
		t.Fatal(err)
	}
	_, err = c.Retr(ctx, 7)
	if !errors.As(err, &pe) || pe.Command != "RETR 7" || pe.Text != "no such message" {
		t.Errorf("RETR 7: %v", err)
	}
	_, err = c.UIDL(ctx)
	if !errors.As(err, &pe) || pe.Command != "UIDL" || !pe.Temporary() {
		t.Errorf("UIDL: %v", err)
	}
	// The connection is still usable after -ERR replies.
	if _, err := c.List(ctx); err != nil {
		t.Errorf("List after -ERR: %v", err)
	}
}

func TestFakeDropMidRetr(t *testing.T) {
	const sent = 1 << 20
	s := &fakeServer{msgs: fakeMsgs}
	s.handle = func(fc *fakeConn, cmd string, args []string) bool {
		if cmd != "RETR" {
			return false
		}
		fc.send("+OK 5000000 octets")
		line := strings.Repeat("a", 1022) + "\r\n"
		for range sent / len(line) {
			fc.w.WriteString(line)
		}
		fc.w.Flush()
		fc.Close()
		return true
	}
	c := dialFake(t, s, Options{})
	r, err := c.Retr(t.Context(), 3)
	if err != nil {
		t.Fatal(err)
	}
	n, err := io.Copy(io.Discard, r)
	if n != sent {
		t.Errorf("read %d bytes, want %d", n, sent)
	}
	var ce *ConnError
	if !errors.As(err, &ce) || !errors.Is(err, io.ErrUnexpectedEOF) || ce.Timeout() {
		t.Fatalf("err = %#v, want *ConnError wrapping io.ErrUnexpectedEOF", err)
	}
	if want := "retr 3: connection lost after 1048576 bytes"; err.Error() != want {
		t.Errorf("err = %q, want %q", err, want)
	}
	if err := r.Close(); err != nil {
		t.Errorf("Close after failure: %v", err)
	}
	if err := c.Noop(t.Context()); !errors.Is(err, ErrClosed) {
		t.Errorf("Noop after lost connection = %v, want ErrClosed", err)
	}
}

// hangingServer answers the greeting and CAPA, then never answers NOOP.
func hangingServer() *fakeServer {
	s := &fakeServer{caps: []string{"USER"}}
	s.handle = func(fc *fakeConn, cmd string, args []string) bool {
		if cmd == "NOOP" {
			io.Copy(io.Discard, fc.r) // until the client goes away
			return true
		}
		return false
	}
	return s
}

func TestFakeTimeout(t *testing.T) {
	c := dialFake(t, hangingServer(), Options{Timeout: 200 * time.Millisecond})
	err := c.Noop(t.Context())
	var ce *ConnError
	if !errors.As(err, &ce) || !ce.Timeout() || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("err = %#v, want a timeout *ConnError", err)
	}
	if !strings.HasPrefix(err.Error(), "noop: timed out after 0 bytes") {
		t.Errorf("err = %q", err)
	}
}

func TestFakeContextCancel(t *testing.T) {
	c := dialFake(t, hangingServer(), Options{Timeout: time.Minute})
	ctx, cancel := context.WithCancel(t.Context())
	time.AfterFunc(100*time.Millisecond, cancel)
	err := c.Noop(ctx)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}

	c2 := dialFake(t, hangingServer(), Options{Timeout: time.Minute})
	ctx, cancel = context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	if err := c2.Noop(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want context.DeadlineExceeded", err)
	}
}

// TestFakeCancelMidRetr: the context of Retr also bounds the reading.
func TestFakeCancelMidRetr(t *testing.T) {
	s := &fakeServer{}
	s.handle = func(fc *fakeConn, cmd string, args []string) bool {
		if cmd != "RETR" {
			return false
		}
		fc.send("+OK", "Subject: slow", "")
		io.Copy(io.Discard, fc.r)
		return true
	}
	c := dialFake(t, s, Options{Timeout: time.Minute})
	ctx, cancel := context.WithCancel(t.Context())
	r, err := c.Retr(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	time.AfterFunc(100*time.Millisecond, cancel)
	n, err := io.Copy(io.Discard, r)
	if !errors.Is(err, context.Canceled) || n != int64(len("Subject: slow\r\n\r\n")) {
		t.Fatalf("read %d, err = %v; want context.Canceled", n, err)
	}
	if want := "retr 1: aborted after 17 bytes: context canceled"; err.Error() != want {
		t.Errorf("err = %q, want %q", err, want)
	}
}

func TestFakeGarbage(t *testing.T) {
	for _, reply := range []string{"hello", "+OKAY", "* OK imap?", "", "-ERRx"} {
		t.Run(reply, func(t *testing.T) {
			s := &fakeServer{}
			s.handle = func(fc *fakeConn, cmd string, args []string) bool {
				if cmd == "STAT" {
					fc.send(reply)
					return true
				}
				return false
			}
			c := dialFake(t, s, Options{})
			_, _, err := c.Stat(t.Context())
			var pe *ProtocolError
			if !errors.As(err, &pe) || pe.Command != "STAT" || pe.Line != reply {
				t.Fatalf("err = %#v, want *ProtocolError", err)
			}
			if err := c.Noop(t.Context()); !errors.Is(err, ErrClosed) {
				t.Errorf("Noop after protocol error = %v, want ErrClosed", err)
			}
		})
	}
	t.Run("bad STAT", func(t *testing.T) {
		s := &fakeServer{}
		s.handle = func(fc *fakeConn, cmd string, args []string) bool {
			if cmd == "STAT" {
				fc.send("+OK many")
				return true
			}
			return false
		}
		_, _, err := dialFake(t, s, Options{}).Stat(t.Context())
		var pe *ProtocolError
		if !errors.As(err, &pe) {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("bad LIST line", func(t *testing.T) {
		s := &fakeServer{}
		s.handle = func(fc *fakeConn, cmd string, args []string) bool {
			if cmd == "LIST" {
				fc.send("+OK", "1 100", "two 200", ".")
				return true
			}
			return false
		}
		_, err := dialFake(t, s, Options{}).List(t.Context())
		var pe *ProtocolError
		if !errors.As(err, &pe) || pe.Line != "two 200" {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("greeting", func(t *testing.T) {
		s := &fakeServer{t: t, greeting: "220 smtp.example.org ESMTP"}
		_, err := Dial(t.Context(), s.start(), Options{Timeout: 5 * time.Second})
		var pe *ProtocolError
		if !errors.As(err, &pe) || pe.Command != "greeting" {
			t.Fatalf("err = %v", err)
		}
	})
}

func TestFakeRetrLimit(t *testing.T) {
	big := bytes.Repeat([]byte("0123456789abcde\r\n"), 1000)
	s := &fakeServer{msgs: [][]byte{fakeMsgs[0], big}}
	c := dialFake(t, s, Options{})
	ctx := t.Context()
	_, err := c.RetrLimit(ctx, 2, 1000)
	if !errors.Is(err, ErrTooLarge) {
		t.Fatalf("RetrLimit = %v, want ErrTooLarge", err)
	}
	if got := readAll(t)(c.RetrLimit(ctx, 1, 1000)); !bytes.Equal(got, fakeMsgs[0]) {
		t.Errorf("RetrLimit 1 = %q", got)
	}
	if got := readAll(t)(c.RetrLimit(ctx, 2, int64(len(big)))); !bytes.Equal(got, big) {
		t.Errorf("RetrLimit 2 at its size: %d bytes", len(got))
	}

	// A server whose LIST understates the size: the reader stops at the
	// limit and the connection is closed.
	s2 := &fakeServer{msgs: [][]byte{big}}
	s2.handle = func(fc *fakeConn, cmd string, args []string) bool {
		if cmd == "LIST" {
			fc.send("+OK 1 10")
			return true
		}
		return false
	}
	c2 := dialFake(t, s2, Options{})
	r, err := c2.RetrLimit(ctx, 1, 1000)
	if err != nil {
		t.Fatal(err)
	}
	n, err := io.Copy(io.Discard, r)
	if !errors.Is(err, ErrTooLarge) || n > 1000+64<<10 {
		t.Fatalf("read %d, err = %v; want ErrTooLarge", n, err)
	}
	r.Close()
	if err := c2.Noop(ctx); !errors.Is(err, ErrClosed) {
		t.Errorf("Noop = %v, want ErrClosed", err)
	}
}

func TestFakeReaderObligation(t *testing.T) {
	s := &fakeServer{msgs: fakeMsgs, caps: []string{"TOP"}}
	c := dialFake(t, s, Options{})
	ctx := t.Context()
	r, err := c.Retr(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Noop(ctx); !errors.Is(err, ErrReaderOpen) {
		t.Errorf("Noop with open reader = %v, want ErrReaderOpen", err)
	}
	buf := make([]byte, 5)
	if _, err := io.ReadFull(r, buf); err != nil {
		t.Fatal(err)
	}
	if err := r.Close(); err != nil { // drains the rest
		t.Fatal(err)
	}
	if _, err := r.Read(buf); err != io.EOF {
		t.Errorf("Read after Close = %v, want EOF", err)
	}
	if got := readAll(t)(c.Top(ctx, 3, 1)); string(got) != "Subject: three\r\n\r\nline 1\r\n" {
		t.Errorf("TOP 3 1 = %q", got)
	}
}

func TestFakeTLSModesNeedTLS(t *testing.T) {
	// STLS refused: Dial fails, it never falls back to plaintext.
	s := &fakeServer{t: t, caps: []string{"USER"}}
	_, err := Dial(t.Context(), s.start(), Options{TLS: StartTLS, Timeout: 5 * time.Second})
	var pe *Error
	if !errors.As(err, &pe) || pe.Command != "STLS" {
		t.Fatalf("Dial StartTLS = %v, want *Error for STLS", err)
	}
	if _, err := Dial(t.Context(), "127.0.0.1:1", Options{TLS: Implicit, Fingerprint: "zz"}); err == nil || !strings.Contains(err.Error(), "fingerprint") {
		t.Errorf("bad fingerprint accepted: %v", err)
	}
}
