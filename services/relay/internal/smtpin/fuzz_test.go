package smtpin

import (
	"bufio"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
)

// FuzzSession feeds arbitrary command streams to a live server: on the
// inbound listener, on submission before TLS, and on submission after
// STARTTLS and AUTH. The server must not crash, must close the session once
// the client is done, and must still serve a normal session (a message
// published to mail.inbound) afterwards.
func FuzzSession(f *testing.F) {
	seeds := []string{
		"EHLO a\r\nMAIL FROM:<x@internet.test>\r\nRCPT TO:<alice@example.com>\r\nDATA\r\nSubject: hi\r\n\r\nbody\r\n.\r\nQUIT\r\n",
		"HELO a\r\nMAIL FROM:<> SIZE=99999999999\r\nRCPT TO:<bob@example.com> NOTIFY=NEVER\r\nRSET\r\nNOOP\r\nVRFY x\r\n",
		"EHLO a\r\nBDAT 10 LAST\r\n0123456789MAIL FROM:<a@b>\r\nRCPT TO:<alice+x@example.com>\r\nBDAT 5\r\nabcdeBDAT 0 LAST\r\n",
		"EHLO a\r\nMAIL FROM:<a@b>\r\nRCPT TO:<alice@example.com>\r\nDATA\r\n..\r\n.\r\n.\r\n",
		"EHLO a\r\nAUTH PLAIN AGZ1enplcgB3cm9uZw==\r\nAUTH LOGIN\r\n*\r\nAUTH CRAM-MD5\r\nSTARTTLS\r\n\x16\x03\x01\x00\x05hello",
		"EHLO a\r\nMAIL FROM:<alice@example.com> BODY=8BITMIME AUTH=<> RET=FULL ENVID=x\r\nRCPT TO:<\"q u\"@example.com>\r\nRCPT TO:<@route:alice@example.com>\r\nDATA\r\n\r\n.\r\n",
		"EHLO \x00\xff\r\n" + strings.Repeat("A", 3000) + "\r\nMAIL FROM:<" + strings.Repeat("x", 400) + "@example.com>\r\n",
		"MAIL FROM:<a@b>\r\nEHLO a\r\nEHLO b\r\nDATA\r\nRCPT TO:<postmaster>\r\nQUIT\r\nQUIT\r\n",
		"EHLO a\r\nMAIL FROM:<fuzzer@example.com>\r\nRCPT TO:<bob@example.com>\r\nRCPT TO:<someone@internet.test>\r\nDATA\r\nFrom: a\r\n\r\nx\r\n.\r\nMAIL FROM:<sales@example.com>\r\nMAIL FROM:<>\r\n",
		"EHLO a\r\nAUTH LOGIN ZnV6emVy\r\nd3Jvbmc=\r\nAUTH PLAIN\r\n=\r\nAUTH PLAIN !!!\r\n",
	}
	for _, s := range seeds {
		for mode := range byte(3) {
			f.Add(append([]byte{mode}, s...))
		}
	}
	e := start(f, func(c *Config, _ *testPKI) {
		c.MaxMessageBytes = 64 << 10
		c.MaxRecipients = 5
		c.Timeouts.Command = 5 * time.Second
		c.AuthLockout = LockoutConfig{} // the harness logs in on every run
		c.Submission.MaxConnections = 1000
		c.Inbound.MaxConnections = 1000
	})
	// Unknown users are checked against a cheap hash too (argon2id is
	// slow under coverage instrumentation).
	e.srv.dummyOnce.Do(func() { e.srv.dummyHash = fuzzerHash })
	auth := "AUTH PLAIN " + base64.StdEncoding.EncodeToString([]byte("\x00fuzzer\x00"+fuzzerPW))
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) == 0 || len(data) > 256<<10 {
			return
		}
		mode, input := data[0]%3, data[1:]
		listener := ListenerInbound
		if mode > 0 {
			listener = ListenerSubmission
		}
		conn, err := net.Dial("tcp", e.addr(listener))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(30 * time.Second))
		var c net.Conn = conn
		br := bufio.NewReader(c)
		if mode == 2 {
			expectReply(t, br, "220")
			io.WriteString(c, "EHLO fuzz\r\n")
			expectReply(t, br, "250")
			io.WriteString(c, "STARTTLS\r\n")
			expectReply(t, br, "220")
			tc := tls.Client(conn, e.clientTLS())
			c, br = tc, bufio.NewReader(tc)
			io.WriteString(c, "EHLO fuzz\r\n")
			expectReply(t, br, "250")
			io.WriteString(c, auth+"\r\n")
			expectReply(t, br, "235")
		}
		// Send everything, say we are done, and read until the server
		// closes the connection.
		done := make(chan struct{})
		go func() {
			defer close(done)
			_, _ = io.Copy(io.Discard, br)
		}()
		_, _ = c.Write(input)
		switch v := c.(type) {
		case *tls.Conn:
			_ = v.CloseWrite()
		case *net.TCPConn:
			_ = v.CloseWrite()
		}
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			t.Fatalf("the server did not end the session after the client's end of input (mode %d)", mode)
		}
		checkNormalSession(t, e)
	})
}

// expectReply reads one (multi-line) reply and fails unless it has the code.
func expectReply(t *testing.T, br *bufio.Reader, code string) {
	t.Helper()
	for range 50 {
		l, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("reading the %s reply: %v", code, err)
		}
		if !strings.HasPrefix(l, code) {
			t.Fatalf("reply %q, want %s", l, code)
		}
		if len(l) < 4 || l[3] != '-' {
			return
		}
	}
}

// checkNormalSession sends one message through the inbound listener.
func checkNormalSession(t *testing.T, e *env) {
	t.Helper()
	c, err := smtp.Dial(e.addr(ListenerInbound))
	if err != nil {
		t.Fatalf("the server no longer accepts connections: %v", err)
	}
	defer c.Close()
	if err := send(c, "someone@internet.test", []string{"alice@example.com"}, message("after-fuzz")); err != nil {
		t.Fatalf("a normal session after the fuzz input failed: %v", err)
	}
	if err := c.Quit(); err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("QUIT: %v", err)
	}
}
