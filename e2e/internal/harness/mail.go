package harness

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/emersion/go-message/textproto"
)

// MessageID returns the Message-ID field of a message (with its angle
// brackets), or "" when it has none or its header cannot be read.
func MessageID(msg []byte) string {
	h, err := textproto.ReadHeader(bufio.NewReader(bytes.NewReader(msg)))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(h.Get("Message-Id"))
}

// NewMessage returns a small RFC 5322 message with CRLF line ends, the
// given Message-ID (e.g. "<x1@e2e.test>") and body lines.
func NewMessage(from, to, subject, messageID string, body ...string) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "From: %s\r\nTo: %s\r\nSubject: %s\r\nDate: %s\r\nMessage-ID: %s\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n",
		from, to, subject, time.Now().Format(time.RFC1123Z), messageID)
	for _, l := range body {
		b.WriteString(l + "\r\n")
	}
	return b.Bytes()
}

// CountByMessageID counts messages by their Message-ID field.
func CountByMessageID(msgs [][]byte) map[string]int {
	n := map[string]int{}
	for _, m := range msgs {
		n[MessageID(m)]++
	}
	return n
}

// MaildirMessages reads every message in the INBOX Maildir of username
// straight from the files, as they are on disk.
func (s *Site) MaildirMessages(username string) ([][]byte, error) {
	files, err := s.MaildirFiles(username)
	if err != nil {
		return nil, err
	}
	var out [][]byte
	for _, f := range files {
		b, err := os.ReadFile(f)
		if os.IsNotExist(err) {
			continue // moved from new/ to cur/ meanwhile
		}
		if err != nil {
			return nil, err
		}
		out = append(out, b)
	}
	return out, nil
}
