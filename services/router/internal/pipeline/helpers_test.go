package pipeline

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/postern/postern/api/events"
	"github.com/postern/postern/internal/msgbus"
	"github.com/postern/postern/internal/replica"
	"github.com/postern/postern/internal/sitestate"
	"github.com/postern/postern/services/router/internal/routing"
)

// The test directory, as the users service's sync feed replicates it:
//
//	sites:  hq (example.com, this site), branch (branch.example.org)
//	users:  alice (hq; receive+send), bob (hq; receive only),
//	        carol (branch, alias carol@example.com), mia (hq; manager of sales),
//	        zs "Zhangsan" (hq; staff of sales; receive+send)
//	shared: sales@example.com: manager mia, staff zs, rewrite, copy outbound
const site = "hq"

func entry(kind, id string, v map[string]any, keys ...string) sitestate.Entry {
	v["id"] = id
	data, _ := json.Marshal(v)
	return sitestate.Entry{Kind: kind, ID: id, Version: 1, Data: data, Keys: keys}
}

func user(id, name, display, addr, home string, recv, send bool, aliases ...string) sitestate.Entry {
	keys := append([]string{name, addr}, aliases...)
	return entry(replica.KindUser, id, map[string]any{
		"username": name, "display_name": display, "primary_address": addr, "aliases": aliases, "site": home,
		"enabled": true, "permissions": map[string]bool{"internet_receive": recv, "internet_send": send},
	}, keys...)
}

func testDirectory() []sitestate.Entry {
	return []sitestate.Entry{
		entry(replica.KindSite, "hq", map[string]any{"name": "hq", "domains": []string{"example.com"}}, "example.com"),
		entry(replica.KindSite, "branch", map[string]any{"name": "branch", "domains": []string{"branch.example.org"}}, "branch.example.org"),
		user("u-alice", "alice", "Alice Archer", "alice@example.com", "hq", true, true),
		user("u-bob", "bob", "Bob Baker", "bob@example.com", "hq", true, false),
		user("u-carol", "carol", "Carol Cole", "carol@branch.example.org", "branch", true, true, "carol@example.com"),
		user("u-mia", "mia", "Mia Manager", "mia@example.com", "hq", true, true),
		user("u-zs", "zhangsan", "Zhangsan", "zhangsan@example.com", "hq", true, true),
		entry(replica.KindSharedMailbox, "sm-sales", map[string]any{
			"address": "sales@example.com", "display_name": "Sales", "manager": "u-mia", "staff": []string{"u-zs"},
			"forward_to_staff": true, "rewrite_sender": true, "copy_outbound_to_manager": true,
		}, "sales@example.com"),
	}
}

// openStore opens the SQLite site state at path, seeding the directory when
// seed is set.
func openStore(t testing.TB, path string, seed bool) sitestate.Store {
	t.Helper()
	ctx := context.Background()
	st, err := sitestate.OpenSQLite(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	if seed {
		if err := st.Directory().Apply(ctx, sitestate.ChangeSet{Snapshot: true, Cursor: "1", Put: testDirectory()}); err != nil {
			t.Fatal(err)
		}
	}
	return st
}

func newStore(t testing.TB) (sitestate.Store, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "state.db")
	return openStore(t, path, true), path
}

func options(st sitestate.Store) Options {
	return Options{
		Routing:      routing.Config{Site: site},
		Directory:    st.Directory(),
		Index:        st.MessageIndex(),
		Keys:         st.Idempotency(),
		ReportingMTA: "mx.example.com",
		Postmaster:   "postmaster@example.com",
	}
}

func newPipeline(t testing.TB, o Options) *Pipeline {
	t.Helper()
	p, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// rfc822 builds a CRLF message whose body brings it to about size bytes.
func rfc822(size int, header ...string) []byte {
	head := strings.Join(header, "\r\n") + "\r\n\r\n"
	var b strings.Builder
	b.WriteString(head)
	line := "The quick brown fox jumps over the lazy dog, again and again.\r\n"
	for b.Len()+len(line) <= size {
		b.WriteString(line)
	}
	b.WriteString("end\r\n")
	return []byte(b.String())
}

// receivedAt is when the edge accepted every inbound record of the tests.
var receivedAt = time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC)

// inbound builds a mail.inbound record. src is "pop3", "smtp" or
// "auth:<user id>".
func inbound(id, src, from string, msg []byte, rcpts ...string) events.Inbound {
	in := events.Inbound{ID: id, Site: site, MailFrom: from, Recipients: rcpts,
		ReceivedAt: receivedAt, Message: msg}
	switch {
	case src == "pop3":
		in.Source = events.Source{Kind: events.SourcePOP3, POP3Account: "isp", POP3UIDL: "uidl-" + id}
	case src == "smtp":
		in.Source = events.Source{Kind: events.SourceSMTP, SMTPSession: "s-" + id}
	case strings.HasPrefix(src, "auth:"):
		in.Source = events.Source{Kind: events.SourceSMTP, SMTPSession: "s-" + id, AuthUser: strings.TrimPrefix(src, "auth:")}
	default:
		panic(src)
	}
	return in
}

func inboundMessage(t testing.TB, in events.Inbound) msgbus.Message {
	t.Helper()
	r, err := in.Encode()
	if err != nil {
		t.Fatal(err)
	}
	return msgbus.NewMessage(events.TopicInbound, r)
}

// consume runs a consumer until the test ends.
func consume(t testing.TB, bus *msgbus.Bus, sub msgbus.Subscription) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- bus.Consume(ctx, sub) }()
	var once sync.Once
	t.Cleanup(func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Consume: %v", err)
				}
			case <-time.After(30 * time.Second):
				t.Errorf("Consume did not return within 30s of cancel")
			}
		})
	})
}

// topicRecords reads every record of a logical topic, all partitions, up to
// the high watermark, without a consumer group.
func topicRecords(t testing.TB, bus *msgbus.Bus, topic string) []kafka.Message {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	addr, wire := bus.Config().Brokers[0], bus.Topic(topic)
	conn, err := kafka.DialContext(ctx, "tcp", addr)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	parts, err := conn.ReadPartitions(wire)
	conn.Close()
	if err != nil {
		t.Fatalf("partitions of %s: %v", wire, err)
	}
	var out []kafka.Message
	for _, p := range parts {
		c, err := kafka.DialLeader(ctx, "tcp", addr, wire, p.ID)
		if err != nil {
			t.Fatalf("dial leader of %s/%d: %v", wire, p.ID, err)
		}
		last, err := c.ReadLastOffset()
		if err != nil {
			c.Close()
			t.Fatalf("last offset of %s/%d: %v", wire, p.ID, err)
		}
		if _, err := c.Seek(0, kafka.SeekAbsolute); err != nil {
			c.Close()
			t.Fatalf("seek: %v", err)
		}
		for off := int64(0); off < last; {
			_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
			batch := c.ReadBatch(1, 256<<20)
			for {
				m, err := batch.ReadMessage()
				if err != nil {
					break
				}
				out = append(out, m)
				off = m.Offset + 1
			}
			if err := batch.Close(); err != nil {
				c.Close()
				t.Fatalf("read %s/%d: %v", wire, p.ID, err)
			}
		}
		c.Close()
	}
	return out
}

// committed returns how many records of the logical topic the group has
// committed, over all partitions.
func committed(t testing.TB, bus *msgbus.Bus, group, topic string) int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := &kafka.Client{Addr: kafka.TCP(bus.Config().Brokers...), Timeout: 10 * time.Second}
	wire := bus.Topic(topic)
	ps := make([]int, bus.Config().Partitions)
	for i := range ps {
		ps[i] = i
	}
	resp, err := c.OffsetFetch(ctx, &kafka.OffsetFetchRequest{GroupID: group, Topics: map[string][]int{wire: ps}})
	if err != nil {
		t.Fatalf("offset fetch: %v", err)
	}
	sum := int64(0)
	for _, p := range resp.Topics[wire] {
		sum += max(p.CommittedOffset, 0)
	}
	return sum
}

// waitCommitted polls until the group has committed n records of topic,
// for at most d.
func waitCommitted(t testing.TB, bus *msgbus.Bus, group, topic string, n int64, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		got := committed(t, bus, group, topic)
		if got >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %s the group %s has committed %d records of %s; want %d", d, group, got, topic, n)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func header(m kafka.Message, key string) string {
	for _, h := range m.Headers {
		if h.Key == key {
			return string(h.Value)
		}
	}
	return ""
}

func record(m kafka.Message) events.Record {
	r := events.Record{Key: m.Key, Value: m.Value}
	for _, h := range m.Headers {
		r.Headers = append(r.Headers, events.Header{Key: h.Key, Value: h.Value})
	}
	return r
}

// deliveries decodes the records of mail.delivery.
func deliveries(t testing.TB, bus *msgbus.Bus) []events.Delivery {
	t.Helper()
	var out []events.Delivery
	for _, m := range topicRecords(t, bus, events.TopicDelivery) {
		d, err := events.DecodeDelivery(record(m))
		if err != nil {
			t.Fatalf("mail.delivery record at %d/%d: %v", m.Partition, m.Offset, err)
		}
		out = append(out, d)
	}
	return out
}

// summary is a delivery as the tests compare it.
func summary(d events.Delivery) string {
	switch d.Destination {
	case events.DestLocal:
		return fmt.Sprintf("%s local:%s", d.InboundID, d.Mailbox)
	case events.DestSite:
		return fmt.Sprintf("%s site:%s:%s", d.InboundID, d.TargetSite, strings.Join(d.Recipients, ","))
	}
	return fmt.Sprintf("%s outbound:%s:%s", d.InboundID, d.MailFrom, strings.Join(d.Recipients, ","))
}
