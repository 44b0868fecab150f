package harness

import (
	"bytes"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// SubmissionHelo is the EHLO name the harness's submission clients give:
// go-smtp's client says "localhost" before STARTTLS and keeps it after.
const SubmissionHelo = "localhost"

// InboundHelo is the EHLO name of the harness's clients on the inbound
// listener (a mail server on the Internet).
const InboundHelo = "mx.outside.example"

// smtpTimeout bounds every command of the harness's SMTP clients.
const smtpTimeout = 30 * time.Second

// SMTPClient is one SMTP session to a relay listener, sending one message
// after the other.
type SMTPClient struct {
	c *smtp.Client
}

// DialSubmission opens a session on the site's submission listener the way
// a mail client does: EHLO, STARTTLS (trusting the relay's self-signed
// certificate), EHLO again, AUTH PLAIN with the user's directory password.
func (s *Site) DialSubmission(t testing.TB, username, password string) (*SMTPClient, error) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", s.Addr("submission"), 10*time.Second)
	if err != nil {
		return nil, err
	}
	_ = conn.SetDeadline(time.Now().Add(smtpTimeout))
	c, err := smtp.NewClientStartTLS(conn, s.ClientTLS(t))
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("EHLO, STARTTLS: %w", err)
	}
	_ = conn.SetDeadline(time.Time{})
	c.CommandTimeout, c.SubmissionTimeout = smtpTimeout, smtpTimeout
	if err := c.Auth(sasl.NewPlainClient("", username, password)); err != nil {
		c.Close()
		return nil, fmt.Errorf("AUTH PLAIN as %s: %w", username, err)
	}
	return &SMTPClient{c: c}, nil
}

// DialInbound opens a session on the site's inbound listener (port 25 in
// production) as a server on the Internet would: EHLO, no TLS, no AUTH.
func (s *Site) DialInbound(t testing.TB) (*SMTPClient, error) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", s.Addr("inbound"), 10*time.Second)
	if err != nil {
		return nil, err
	}
	c := smtp.NewClient(conn)
	c.CommandTimeout, c.SubmissionTimeout = smtpTimeout, smtpTimeout
	if err := c.Hello(InboundHelo); err != nil {
		c.Close()
		return nil, err
	}
	return &SMTPClient{c: c}, nil
}

// Send sends one message in the session; nil means the server answered
// 250 to the final dot (the message is accepted).
func (c *SMTPClient) Send(from string, to []string, msg []byte) error {
	return c.c.SendMail(from, to, bytes.NewReader(msg))
}

// Close ends the session with QUIT.
func (c *SMTPClient) Close() error {
	err := c.c.Quit()
	c.c.Close()
	return err
}

// Submit sends one message over submission as username in a session of its
// own.
func (s *Site) Submit(t testing.TB, username, password, from string, to []string, msg []byte) error {
	t.Helper()
	c, err := s.DialSubmission(t, username, password)
	if err != nil {
		return err
	}
	if err := c.Send(from, to, msg); err != nil {
		c.c.Close()
		return err
	}
	return c.Close()
}

// SendInbound sends one message to the inbound listener in a session of
// its own.
func (s *Site) SendInbound(t testing.TB, from string, to []string, msg []byte) error {
	t.Helper()
	c, err := s.DialInbound(t)
	if err != nil {
		return err
	}
	if err := c.Send(from, to, msg); err != nil {
		c.c.Close()
		return err
	}
	return c.Close()
}
