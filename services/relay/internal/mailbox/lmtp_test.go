package mailbox

// LMTP failure injection with a real go-smtp LMTP server (Dovecot cannot be
// told to answer 4xx or to hang); the happy path against Dovecot is in
// dovecot_test.go.

import (
	"context"
	"errors"
	"io"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/postern/postern/internal/sitestate"
)

// lmtpBackend records what it receives and fails as told.
type lmtpBackend struct {
	mu       sync.Mutex
	sessions int
	messages []lmtpReceived
	// rcptErr and dataErr, if set, answer RCPT TO and the data.
	rcptErr, dataErr *smtp.SMTPError
	// block, if set, is waited on before answering the data, after a
	// send on blocked.
	block, blocked chan struct{}
	conns          []*smtp.Conn
}

type lmtpReceived struct {
	from, rcpt string
	data       []byte
}

func (b *lmtpBackend) NewSession(c *smtp.Conn) (smtp.Session, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.sessions++
	b.conns = append(b.conns, c)
	return &lmtpSession{b: b}, nil
}

func (b *lmtpBackend) state() (sessions int, msgs []lmtpReceived) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.sessions, append([]lmtpReceived(nil), b.messages...)
}

// dropConnections closes every server-side connection, as a restarted
// Dovecot would.
func (b *lmtpBackend) dropConnections() {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, c := range b.conns {
		c.Conn().Close()
	}
	b.conns = nil
}

func (b *lmtpBackend) set(rcptErr, dataErr *smtp.SMTPError) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.rcptErr, b.dataErr = rcptErr, dataErr
}

type lmtpSession struct {
	b          *lmtpBackend
	from, rcpt string
}

func (s *lmtpSession) Reset()        {}
func (s *lmtpSession) Logout() error { return nil }
func (s *lmtpSession) Mail(from string, _ *smtp.MailOptions) error {
	s.from = from
	return nil
}
func (s *lmtpSession) Rcpt(to string, _ *smtp.RcptOptions) error {
	s.b.mu.Lock()
	defer s.b.mu.Unlock()
	if s.b.rcptErr != nil {
		return s.b.rcptErr
	}
	s.rcpt = to
	return nil
}
func (s *lmtpSession) Data(r io.Reader) error {
	data, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	s.b.mu.Lock()
	block, dataErr := s.b.block, s.b.dataErr
	s.b.mu.Unlock()
	if block != nil {
		s.b.blocked <- struct{}{}
		<-block
	}
	if dataErr != nil {
		return dataErr
	}
	s.b.mu.Lock()
	defer s.b.mu.Unlock()
	s.b.messages = append(s.b.messages, lmtpReceived{s.from, s.rcpt, data})
	return nil
}

// lmtpMsg is msgFor(id) for the fake server: go-smtp's server insists on
// a domain in RCPT TO, so the user name has one (Dovecot takes bare user
// names, which is what Postern's users have).
func lmtpMsg(id string) Message {
	m := msgFor(id)
	m.Username = "alice@lmtp.test"
	return m
}

// startLMTPServer serves LMTP on l (closed in t.Cleanup).
func startLMTPServer(t *testing.T, l net.Listener) *lmtpBackend {
	t.Helper()
	be := &lmtpBackend{}
	s := smtp.NewServer(be)
	s.LMTP = true
	s.Domain = "lmtp.test"
	s.ReadTimeout = 10 * time.Second
	s.WriteTimeout = 10 * time.Second
	go s.Serve(l)
	t.Cleanup(func() {
		be.mu.Lock()
		if be.block != nil {
			select {
			case <-be.block:
			default:
				close(be.block)
			}
		}
		be.mu.Unlock()
		s.Close()
	})
	return be
}

func tcpLMTP(t *testing.T) (*lmtpBackend, string) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return startLMTPServer(t, l), l.Addr().String()
}

func testState(t *testing.T) sitestate.Store {
	t.Helper()
	st, err := sitestate.OpenSQLite(context.Background(), filepath.Join(t.TempDir(), "site.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

func newTestLMTP(t *testing.T, addr string, st sitestate.Store) *LMTP {
	t.Helper()
	cfg := DefaultConfig().LMTP
	cfg.Address = addr
	cfg.Timeout = 10 * time.Second
	l, err := NewLMTP(cfg, Options{State: st.Idempotency(), Hostname: "relay.test"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// TestLMTPEnvelopeAndReuse: the server gets MAIL FROM:<sender>, RCPT
// TO:<user name> and Delivered-To + the message; sessions are reused, and
// replaced when the server dropped them.
func TestLMTPEnvelopeAndReuse(t *testing.T) {
	ctx := context.Background()
	be, addr := tcpLMTP(t)
	st := testState(t)
	l := newTestLMTP(t, addr, st)
	for _, id := range []string{"r-1", "r-2", "r-3"} {
		if err := l.Deliver(ctx, lmtpMsg(id)); err != nil {
			t.Fatal(err)
		}
	}
	sessions, msgs := be.state()
	if sessions != 1 {
		t.Errorf("%d LMTP sessions for 3 sequential deliveries, want 1 (reused)", sessions)
	}
	if len(msgs) != 3 {
		t.Fatalf("server got %d messages, want 3", len(msgs))
	}
	m := msgs[0]
	wantData := "Delivered-To: alice@example.test\r\n" + string(lmtpMsg("r-1").Data)
	if m.from != "bob@example.org" || m.rcpt != "alice@lmtp.test" || string(m.data) != wantData {
		t.Errorf("server got from=%q rcpt=%q data=%q; want bob@example.org, alice@lmtp.test, %q", m.from, m.rcpt, m.data, wantData)
	}
	for _, id := range []string{"r-1", "r-2", "r-3"} {
		if seen, err := st.Idempotency().Seen(ctx, "lmtp:"+id); err != nil || !seen {
			t.Errorf("key lmtp:%s seen = %v, %v; want claimed after the 250", id, seen, err)
		}
	}

	be.dropConnections()
	if err := l.Deliver(ctx, lmtpMsg("r-4")); err != nil {
		t.Fatalf("Deliver after the server dropped the session: %v", err)
	}
	if sessions, msgs := be.state(); sessions != 2 || len(msgs) != 4 {
		t.Errorf("after a dropped session: %d sessions, %d messages; want 2, 4", sessions, len(msgs))
	}
}

// TestLMTPDuplicate: an id already delivered is not sent again.
func TestLMTPDuplicate(t *testing.T) {
	ctx := context.Background()
	be, addr := tcpLMTP(t)
	st := testState(t)
	l := newTestLMTP(t, addr, st)
	for range 3 {
		if err := l.Deliver(ctx, lmtpMsg("dup")); err != nil {
			t.Fatal(err)
		}
	}
	// A restarted relay shares the site state.
	if err := newTestLMTP(t, addr, st).Deliver(ctx, lmtpMsg("dup")); err != nil {
		t.Fatal(err)
	}
	if _, msgs := be.state(); len(msgs) != 1 {
		t.Fatalf("server got %d messages for one id, want 1", len(msgs))
	}
}

// TestLMTPReplies: 4xx replies are temporary, 5xx permanent, carrying the
// server's reply; nothing is claimed; the session survives.
func TestLMTPReplies(t *testing.T) {
	ctx := context.Background()
	be, addr := tcpLMTP(t)
	st := testState(t)
	l := newTestLMTP(t, addr, st)
	cases := []struct {
		name             string
		rcptErr, dataErr *smtp.SMTPError
		permanent        bool
		code             int
	}{
		{"rcpt 450", &smtp.SMTPError{Code: 450, EnhancedCode: smtp.EnhancedCode{4, 2, 0}, Message: "mailbox busy"}, nil, false, 450},
		{"rcpt 550", &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"}, nil, true, 550},
		{"data 452", nil, &smtp.SMTPError{Code: 452, EnhancedCode: smtp.EnhancedCode{4, 2, 2}, Message: "over quota, try later"}, false, 452},
		{"data 552", nil, &smtp.SMTPError{Code: 552, EnhancedCode: smtp.EnhancedCode{5, 2, 2}, Message: "mailbox full"}, true, 552},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			be.set(tc.rcptErr, tc.dataErr)
			id := "reply-" + tc.name
			err := l.Deliver(ctx, lmtpMsg(id))
			if err == nil {
				t.Fatal("Deliver succeeded")
			}
			if IsPermanent(err) != tc.permanent {
				t.Errorf("IsPermanent(%v) = %v, want %v", err, !tc.permanent, tc.permanent)
			}
			var se *smtp.SMTPError
			if !errors.As(err, &se) || se.Code != tc.code {
				t.Errorf("error %v does not carry the server's %d", err, tc.code)
			}
			if seen, _ := st.Idempotency().Seen(ctx, "lmtp:"+id); seen {
				t.Error("failed delivery was marked delivered")
			}
			be.set(nil, nil)
			if err := l.Deliver(ctx, lmtpMsg(id)); err != nil {
				t.Fatalf("retry after the failure: %v", err)
			}
		})
	}
	if sessions, _ := be.state(); sessions != 1 {
		t.Errorf("%d sessions, want 1: refusals must not cost the session", sessions)
	}
}

// TestLMTPServerDown: no server is a temporary failure.
func TestLMTPServerDown(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	err = newTestLMTP(t, addr, testState(t)).Deliver(context.Background(), lmtpMsg("down"))
	if err == nil || IsPermanent(err) {
		t.Fatalf("Deliver with no server = %v, want a temporary error", err)
	}
}

// TestLMTPContextCancelled: a server that does not answer the data holds
// the delivery only until its context ends; nothing is claimed.
func TestLMTPContextCancelled(t *testing.T) {
	be, addr := tcpLMTP(t)
	be.block, be.blocked = make(chan struct{}), make(chan struct{}, 1)
	st := testState(t)
	l := newTestLMTP(t, addr, st)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- l.Deliver(ctx, lmtpMsg("hang")) }()
	<-be.blocked // the server has the message and does not answer
	cancel()
	err := <-done
	if err == nil || IsPermanent(err) {
		t.Fatalf("Deliver with a cancelled context = %v, want a temporary error", err)
	}
	if seen, _ := st.Idempotency().Seen(context.Background(), "lmtp:hang"); seen {
		t.Error("interrupted delivery was marked delivered")
	}
}

// TestLMTPUnixSocket: "unix:/path" addresses a Unix socket.
func TestLMTPUnixSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "lmtp.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	be := startLMTPServer(t, l)
	if err := newTestLMTP(t, "unix:"+path, testState(t)).Deliver(context.Background(), lmtpMsg("unix")); err != nil {
		t.Fatal(err)
	}
	if _, msgs := be.state(); len(msgs) != 1 {
		t.Fatalf("server got %d messages, want 1", len(msgs))
	}
}

// TestLMTPBadInput: invalid messages are refused permanently before any
// connection.
func TestLMTPBadInput(t *testing.T) {
	be, addr := tcpLMTP(t)
	l := newTestLMTP(t, addr, testState(t))
	for _, m := range []Message{
		{DeliveryID: "b1", Username: "../x", Recipient: "a@b", Data: []byte("x")},
		{DeliveryID: "b2", Username: "alice", Recipient: "a@b\r\nX: y", Data: []byte("x")},
		{DeliveryID: "", Username: "alice", Recipient: "a@b", Data: []byte("x")},
	} {
		if err := l.Deliver(context.Background(), m); err == nil || !IsPermanent(err) {
			t.Errorf("Deliver(%+v) = %v, want a permanent error", m, err)
		}
	}
	if sessions, _ := be.state(); sessions != 0 {
		t.Errorf("%d sessions opened for invalid input", sessions)
	}
}

// TestConfig: defaults are valid; errors name the key.
func TestConfig(t *testing.T) {
	if err := DefaultConfig().Validate(); err != nil {
		t.Fatalf("DefaultConfig: %v", err)
	}
	lmtp := DefaultConfig()
	lmtp.Kind = KindLMTP
	if err := lmtp.Validate(); err != nil {
		t.Fatalf("DefaultConfig with kind lmtp: %v", err)
	}
	cases := []struct {
		mutate func(*Config)
		key    string
	}{
		{func(c *Config) { c.Kind = "mbox" }, "kind"},
		{func(c *Config) { c.Maildir.Root = "" }, "maildir.root"},
		{func(c *Config) { c.Maildir.Owner = "no-such-user-here" }, "maildir.owner"},
		{func(c *Config) { c.Maildir.MarkerRetention = time.Minute }, "maildir.marker_retention"},
		{func(c *Config) { c.Kind = KindLMTP; c.LMTP.Address = "localhost" }, "lmtp.address"},
		{func(c *Config) { c.Kind = KindLMTP; c.LMTP.Address = "unix:" }, "lmtp.address"},
		{func(c *Config) { c.Kind = KindLMTP; c.LMTP.Address = "h:99999" }, "lmtp.address"},
		{func(c *Config) { c.Kind = KindLMTP; c.LMTP.Timeout = 0 }, "lmtp.timeout"},
		{func(c *Config) { c.Kind = KindLMTP; c.LMTP.MaxConnections = 0 }, "lmtp.max_connections"},
		{func(c *Config) { c.Kind = KindLMTP; c.LMTP.IdempotencyTTL = 0 }, "lmtp.idempotency_ttl"},
	}
	for _, tc := range cases {
		c := DefaultConfig()
		tc.mutate(&c)
		err := c.Validate()
		if err == nil || !strings.HasPrefix(err.Error(), tc.key+":") {
			t.Errorf("Validate = %v, want an error about %s", err, tc.key)
		}
	}
	if _, err := NewLMTP(DefaultConfig().LMTP, Options{}); err == nil {
		t.Error("NewLMTP without State succeeded")
	}
	if _, err := New(Config{Kind: "x"}, Options{}); err == nil {
		t.Error("New with a bad kind succeeded")
	}
}
