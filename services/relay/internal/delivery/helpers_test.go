package delivery_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-message"
	"github.com/segmentio/kafka-go"
	"go.opentelemetry.io/otel/metric/noop"

	"github.com/postern/postern/api/events"
	"github.com/postern/postern/internal/msgbus"
	"github.com/postern/postern/internal/replica"
	"github.com/postern/postern/internal/sitestate"
	"github.com/postern/postern/internal/testenv"
	"github.com/postern/postern/services/relay/internal/delivery"
	"github.com/postern/postern/services/relay/internal/mailbox"
	"github.com/postern/postern/services/relay/internal/smtpout"
)

// rawMessage has what must survive byte for byte: CRLF, a folded header,
// 8-bit text and lines starting with dots.
var rawMessage = []byte("From: Zhang San <zs@example.com>\r\nTo: c@example.net\r\nSubject: a folded\r\n subject\r\nMessage-ID: <m1@example.com>\r\nDate: Sat, 21 Nov 2026 09:30:00 +0000\r\n\r\n.leading dot\r\nbody \xe4\xb8\xad\r\n.\r\nend\r\n")

const site = "hq"

// env is one test's world: an embedded broker, a SQLite site state with
// the directory replica, and a local deliverer.
type env struct {
	t     *testing.T
	bus   *msgbus.Bus
	state sitestate.Store
	local *memMailboxes
}

func newEnv(t *testing.T) *env {
	t.Helper()
	ctx := context.Background()
	st, err := sitestate.OpenSQLite(ctx, filepath.Join(t.TempDir(), "site.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	e := &env{t: t, bus: testenv.Bus(t), state: st, local: &memMailboxes{msgs: map[string]mailbox.Message{}}}
	e.put(entry(t, replica.KindSite, "hq", map[string]any{"name": "hq", "domains": []string{"example.com"}}, "example.com"))
	e.put(entry(t, replica.KindUser, "u-zs", map[string]any{"username": "zhangsan", "primary_address": "zs@example.com", "site": "hq", "enabled": true},
		"zhangsan", "zs@example.com"))
	return e
}

func entry(t *testing.T, kind, id string, v any, keys ...string) sitestate.Entry {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return sitestate.Entry{Kind: kind, ID: id, Version: 1, Data: b, Keys: keys}
}

func (e *env) put(entries ...sitestate.Entry) {
	e.t.Helper()
	if err := e.state.Directory().Apply(context.Background(), sitestate.ChangeSet{Put: entries}); err != nil {
		e.t.Fatal(err)
	}
}

// config is a test configuration: tiny waits, the smarthost at addr in
// plaintext, one consumer each.
func testConfig(smarthost string) delivery.Config {
	cfg := delivery.DefaultConfig()
	cfg.Consumers = 1
	cfg.RetryConsumers = 1
	cfg.Hostname = "relay.hq.example.com"
	cfg.Postmaster = "postmaster@example.com"
	cfg.Retry = delivery.RetryConfig{Base: 100 * time.Millisecond, Factor: 2, Cap: 400 * time.Millisecond, Jitter: 0.2, MaxLifetime: time.Hour}
	cfg.DialTimeout, cfg.CommandTimeout, cfg.DataTimeout = 10*time.Second, 10*time.Second, 10*time.Second
	if smarthost != "" {
		host, port := splitAddr(smarthost)
		cfg.Smarthost.Host, cfg.Smarthost.Port, cfg.Smarthost.TLS = host, port, smtpout.TLSNone
	}
	return cfg
}

func splitAddr(addr string) (string, int) {
	for i := len(addr) - 1; i >= 0; i-- {
		if addr[i] == ':' {
			p, _ := strconv.Atoi(addr[i+1:])
			return addr[:i], p
		}
	}
	return addr, 0
}

// start runs a delivery service until the test ends; stop stops it and
// waits for Run to return.
func (e *env) start(cfg delivery.Config, local delivery.Local) (stop func()) {
	e.t.Helper()
	if local == nil {
		local = e.local
	}
	svc, err := delivery.New(cfg, delivery.Deps{
		Bus: e.bus, Directory: e.state.Directory(), Idempotency: e.state.Idempotency(), Local: local, Site: site,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), MeterProvider: noop.NewMeterProvider(),
	})
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- svc.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				e.t.Errorf("Run: %v", err)
			}
		})
	}
	e.t.Cleanup(stop)
	return stop
}

func (e *env) publish(d events.Delivery) {
	e.t.Helper()
	rec, err := d.Encode()
	if err != nil {
		e.t.Fatal(err)
	}
	if err := e.bus.Publish(context.Background(), msgbus.NewMessage(events.TopicDelivery, rec)); err != nil {
		e.t.Fatal(err)
	}
}

var groups atomic.Int64

// collect reads topic from the beginning until done says the records read
// so far are enough, or timeout; it returns what it read.
func (e *env) collect(topic string, timeout time.Duration, done func([]msgbus.Record) bool) []msgbus.Record {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var (
		mu  sync.Mutex
		got []msgbus.Record
	)
	group := "test-" + strconv.FormatInt(groups.Add(1), 10) + "-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	err := e.bus.Consume(ctx, msgbus.Subscription{Group: group, Topic: topic, Name: "test", Handler: func(_ context.Context, r msgbus.Record) ([]msgbus.Message, error) {
		mu.Lock()
		defer mu.Unlock()
		got = append(got, r)
		if done(got) {
			cancel()
		}
		return nil, nil
	}})
	if err != nil {
		e.t.Fatalf("collect %s: %v", topic, err)
	}
	mu.Lock()
	defer mu.Unlock()
	return got
}

// statuses reads mail.status until done is true for the statuses read.
func (e *env) statuses(done func([]events.Status) bool) []events.Status {
	e.t.Helper()
	var out []events.Status
	e.collect(events.TopicStatus, 40*time.Second, func(rs []msgbus.Record) bool {
		out = out[:0]
		for _, r := range rs {
			s, err := events.DecodeStatus(r.Event())
			if err != nil {
				e.t.Errorf("status record: %v", err)
				continue
			}
			out = append(out, s)
		}
		return done(out)
	})
	return out
}

// final waits for a delivered or bounced status of each recipient.
func (e *env) final(rcpts ...string) []events.Status {
	e.t.Helper()
	sts := e.statuses(func(ss []events.Status) bool {
		for _, r := range rcpts {
			if finalOf(ss, r) == nil {
				return false
			}
		}
		return true
	})
	for _, r := range rcpts {
		if finalOf(sts, r) == nil {
			e.t.Fatalf("no final status for %s; statuses: %+v", r, sts)
		}
	}
	return sts
}

func finalOf(ss []events.Status, rcpt string) *events.Status {
	for i := range ss {
		if ss[i].Recipient == rcpt && (ss[i].Outcome == events.OutcomeDelivered || ss[i].Outcome == events.OutcomeBounced) {
			return &ss[i]
		}
	}
	return nil
}

func outcomes(ss []events.Status, rcpt string) []string {
	var out []string
	for _, s := range ss {
		if s.Recipient == rcpt {
			out = append(out, s.Outcome)
		}
	}
	return out
}

// inbound reads n records from mail.inbound.
func (e *env) inbound(n int) []events.Inbound {
	e.t.Helper()
	rs := e.collect(events.TopicInbound, 40*time.Second, func(rs []msgbus.Record) bool { return len(rs) >= n })
	var out []events.Inbound
	for _, r := range rs {
		in, err := events.DecodeInbound(r.Event())
		if err != nil {
			e.t.Fatalf("inbound record: %v", err)
		}
		out = append(out, in)
	}
	if len(out) < n {
		e.t.Fatalf("%d records on mail.inbound, want %d", len(out), n)
	}
	return out
}

// topicSize is the number of records on a topic (sum of the partitions'
// end offsets), read from the broker.
func (e *env) topicSize(topic string) int64 {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	wire := e.bus.Topic(topic)
	client := &kafka.Client{Addr: kafka.TCP(e.bus.Config().Brokers...)}
	meta, err := client.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{wire}})
	if err != nil || len(meta.Topics) != 1 {
		e.t.Fatalf("metadata of %s: %v", wire, err)
	}
	var reqs []kafka.OffsetRequest
	for _, p := range meta.Topics[0].Partitions {
		reqs = append(reqs, kafka.LastOffsetOf(p.ID))
	}
	resp, err := client.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{wire: reqs}})
	if err != nil {
		e.t.Fatalf("offsets of %s: %v", wire, err)
	}
	var n int64
	for _, p := range resp.Topics[wire] {
		if p.Error != nil {
			e.t.Fatalf("offsets of %s partition %d: %v", wire, p.Partition, p.Error)
		}
		n += p.LastOffset
	}
	return n
}

// dsnReport returns the message/delivery-status part of a bounce, and
// checks the bounce's structure on the way.
func dsnReport(t *testing.T, in events.Inbound) string {
	t.Helper()
	m, err := message.Read(bytes.NewReader(in.Message))
	if err != nil {
		t.Fatalf("bounce is not a MIME message: %v", err)
	}
	typ, params, _ := m.Header.ContentType()
	if typ != "multipart/report" || params["report-type"] != "delivery-status" {
		t.Fatalf("bounce content type %q %v, want multipart/report; report-type=delivery-status", typ, params)
	}
	mr := m.MultipartReader()
	var report string
	var headers bool
	for {
		p, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		pt, _, _ := p.Header.ContentType()
		b, _ := io.ReadAll(p.Body)
		switch pt {
		case "message/delivery-status":
			report = string(b)
		case "text/rfc822-headers":
			headers = bytes.Contains(b, []byte("Message-ID: <m1@example.com>"))
		}
	}
	if report == "" {
		t.Fatal("bounce has no message/delivery-status part")
	}
	if !headers {
		t.Error("bounce does not carry the original header")
	}
	return report
}

// memMailboxes is a local deliverer in memory, idempotent by delivery id
// as the real ones are; it counts calls.
type memMailboxes struct {
	mu    sync.Mutex
	msgs  map[string]mailbox.Message
	calls int
}

func (m *memMailboxes) Deliver(_ context.Context, msg mailbox.Message) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.calls++
	if _, ok := m.msgs[msg.DeliveryID]; !ok {
		m.msgs[msg.DeliveryID] = msg
	}
	return nil
}

func (m *memMailboxes) messages() []mailbox.Message {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []mailbox.Message
	for _, v := range m.msgs {
		out = append(out, v)
	}
	return out
}

// freeAddr returns a 127.0.0.1 address with a port that was free a moment ago.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	_ = l.Close()
	return addr
}

// waitListening waits (bounded) until something accepts connections on addr.
func waitListening(t *testing.T, addr string, stderr fmt.Stringer) {
	t.Helper()
	for range 100 {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			_ = c.Close()
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("nothing listens on %s; stderr: %s", addr, stderr)
}
