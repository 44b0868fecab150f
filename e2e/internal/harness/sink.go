package harness

import (
	"io"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
)

// SinkMessage is one message transaction the sink received.
type SinkMessage struct {
	From      string   // MAIL FROM ("" for <>)
	To        []string // RCPT TO, in order
	Data      []byte   // the message as received
	MessageID string   // its Message-ID field (see MessageID)
	Attempt   int      // how many times a message with this Message-ID reached the final dot, this time included
}

// SinkReply decides the reply to a message's final dot: nil accepts it
// (250); an *smtp.SMTPError refuses it with its code (4xx: try again later,
// 5xx: never).
type SinkReply func(m SinkMessage) error

// Sink is a real SMTP server (emersion/go-smtp) on 127.0.0.1 standing in
// for the ISP's smarthost: plaintext, no AUTH. It records every message it
// accepted and every attempt, and answers as its SinkReply says.
type Sink struct {
	// Addr is its 127.0.0.1:port.
	Addr string

	srv *smtp.Server

	mu       sync.Mutex
	reply    SinkReply
	delay    time.Duration
	accepted []SinkMessage
	attempts map[string]int // Message-ID → final dots seen
	refused  int
}

// StartSink starts a sink that accepts everything; it is closed when the
// test ends.
func StartSink(t testing.TB) *Sink {
	t.Helper()
	s := &Sink{attempts: map[string]int{}}
	srv := smtp.NewServer(smtp.BackendFunc(func(c *smtp.Conn) (smtp.Session, error) {
		return &sinkSession{s: s}, nil
	}))
	srv.Domain = "sink.e2e.test"
	srv.ReadTimeout = time.Minute
	srv.WriteTimeout = time.Minute
	srv.AllowInsecureAuth = true
	srv.ErrorLog = discardLogger{}
	s.srv = srv
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("harness: sink: %v", err)
	}
	s.Addr = l.Addr().String()
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(l)
	}()
	t.Cleanup(func() {
		_ = srv.Close()
		<-done
	})
	return s
}

// Port is the sink's port.
func (s *Sink) Port() int {
	_, p, _ := net.SplitHostPort(s.Addr)
	n, _ := strconv.Atoi(p)
	return n
}

// SetReply changes how the sink answers from the next message on; nil
// accepts everything.
func (s *Sink) SetReply(f SinkReply) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.reply = f
}

// SetDelay makes the sink wait d before it answers each final dot, as a
// slow ISP does.
func (s *Sink) SetDelay(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.delay = d
}

// Accepted returns the messages the sink accepted, in order.
func (s *Sink) Accepted() []SinkMessage {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]SinkMessage(nil), s.accepted...)
}

// Attempts returns how many times a message with Message-ID id reached the
// final dot, accepted or not.
func (s *Sink) Attempts(id string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.attempts[id]
}

// Refused returns how many final dots the sink refused.
func (s *Sink) Refused() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.refused
}

// CountByMessageID returns how many times the sink accepted each
// Message-ID.
func (s *Sink) CountByMessageID() map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := map[string]int{}
	for _, m := range s.accepted {
		n[m.MessageID]++
	}
	return n
}

type sinkSession struct {
	s    *Sink
	from string
	to   []string
}

func (ss *sinkSession) Reset()        { ss.from, ss.to = "", nil }
func (ss *sinkSession) Logout() error { return nil }

func (ss *sinkSession) Mail(from string, _ *smtp.MailOptions) error {
	ss.from, ss.to = from, nil
	return nil
}

func (ss *sinkSession) Rcpt(to string, _ *smtp.RcptOptions) error {
	ss.to = append(ss.to, to)
	return nil
}

func (ss *sinkSession) Data(r io.Reader) error {
	data, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	s := ss.s
	m := SinkMessage{From: ss.from, To: append([]string(nil), ss.to...), Data: data, MessageID: MessageID(data)}
	s.mu.Lock()
	s.attempts[m.MessageID]++
	m.Attempt = s.attempts[m.MessageID]
	reply, delay := s.reply, s.delay
	s.mu.Unlock()
	if delay > 0 {
		time.Sleep(delay)
	}
	if reply != nil {
		if err := reply(m); err != nil {
			s.mu.Lock()
			s.refused++
			s.mu.Unlock()
			return err
		}
	}
	s.mu.Lock()
	s.accepted = append(s.accepted, m)
	s.mu.Unlock()
	return nil
}

type discardLogger struct{}

func (discardLogger) Printf(string, ...any) {}
func (discardLogger) Println(...any)        {}
