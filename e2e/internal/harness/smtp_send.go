package harness

import (
	"errors"

	"github.com/emersion/go-smtp"
)

// SendChecked sends one message in the session, as Send does, and on
// failure also says whether the server may have accepted it anyway:
// ambiguous is true when the transaction failed without a reply at the
// final dot or after it (the connection broke once the whole message had
// been written), the SMTP duplicate window of RFC 1047 on the client's
// side — a client that sends such a message again may deliver it twice
// (Postern's relay gives the copy the inbound id of the first, so it is
// dropped when the message has a Message-ID).
// A failure with a reply (4xx, 5xx) or before the message was written is
// never ambiguous.
func (c *SMTPClient) SendChecked(from string, to []string, msg []byte) (err error, ambiguous bool) {
	if err := c.c.Mail(from, nil); err != nil {
		return err, false
	}
	for _, rcpt := range to {
		if err := c.c.Rcpt(rcpt, nil); err != nil {
			return err, false
		}
	}
	w, err := c.c.Data()
	if err != nil {
		return err, false
	}
	if _, err := w.Write(msg); err != nil {
		_ = w.Close()
		return err, false
	}
	if err := w.Close(); err != nil {
		var se *smtp.SMTPError
		return err, !errors.As(err, &se)
	}
	return nil, false
}

// Abort closes the session's connection without QUIT (after a failure).
func (c *SMTPClient) Abort() { _ = c.c.Close() }
