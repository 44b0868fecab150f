package download

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/postern/postern/api/events"
	"github.com/postern/postern/internal/msgbus"
	"github.com/postern/postern/internal/replica"
	"github.com/postern/postern/internal/sitestate"
	"github.com/postern/postern/internal/testenv"
)

// env is one site: a real SQLite site state and a bus on the embedded
// broker.
type env struct {
	t     *testing.T
	store sitestate.Store
	bus   *msgbus.Bus
	ver   atomic.Int64
}

func newEnv(t *testing.T) *env {
	t.Helper()
	ctx := context.Background()
	st, err := sitestate.OpenSQLite(ctx, filepath.Join(t.TempDir(), "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return newEnvWith(t, st)
}

// newEnvWith is newEnv on the site state st.
func newEnvWith(t *testing.T, st sitestate.Store) *env {
	t.Helper()
	e := &env{t: t, store: st, bus: testenv.Bus(t)}
	e.ver.Store(1)
	e.put(replica.KindSite, "site-hq", []string{"example.com"}, replica.Site{Name: "hq", Domains: []string{"example.com"}})
	e.put(replica.KindSite, "site-branch", []string{"branch.example.org"}, replica.Site{Name: "branch", Domains: []string{"branch.example.org"}})
	return e
}

// put writes one object into the replica, as the AUM client does.
func (e *env) put(kind, id string, keys []string, obj any) {
	e.t.Helper()
	data, err := json.Marshal(obj)
	if err != nil {
		e.t.Fatal(err)
	}
	// The entry's id is authoritative: set "id" in the data too.
	var m map[string]any
	json.Unmarshal(data, &m)
	m["id"] = id
	v := e.ver.Add(1)
	m["version"] = v
	data, _ = json.Marshal(m)
	err = e.store.Directory().Apply(context.Background(), sitestate.ChangeSet{Put: []sitestate.Entry{{Kind: kind, ID: id, Version: v, Data: data, Keys: keys}}})
	if err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) user(id, username, addr string) {
	e.put(replica.KindUser, id, []string{username, addr}, replica.User{Username: username, PrimaryAddress: addr, Site: "hq", Enabled: true})
}

func (e *env) account(a replica.POP3Account) {
	e.put(replica.KindPOP3Account, a.ID, []string{a.Name}, a)
}

func (e *env) remove(kind, id string) {
	err := e.store.Directory().Apply(context.Background(), sitestate.ChangeSet{Delete: []sitestate.Ref{{Kind: kind, ID: id}}})
	if err != nil {
		e.t.Fatal(err)
	}
}

func testLogger(t *testing.T) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("test", t.Name())
	}
	return slog.New(slog.DiscardHandler)
}

func testConfig() Config {
	c := DefaultConfig()
	c.CommandTimeout = 10 * time.Second
	c.SessionTimeout = time.Minute
	c.MinPollInterval = 0
	return c
}

func (e *env) downloader(cfg Config, mod func(*Options)) *Downloader {
	e.t.Helper()
	opts := Options{
		Site:            "hq",
		Bus:             e.bus,
		MaxMessageBytes: int64(e.bus.Config().MaxRecordBytes),
		Directory:       e.store.Directory(),
		Ledger:          e.store.Ledger(),
		Idempotency:     e.store.Idempotency(),
		Logger:          testLogger(e.t),
	}
	if mod != nil {
		mod(&opts)
	}
	d, err := New(cfg, opts)
	if err != nil {
		e.t.Fatal(err)
	}
	return d
}

// inbound reads mail.inbound from the start until it has n records (or
// a generous timeout passes).
func (e *env) inbound(n int) []events.Inbound {
	e.t.Helper()
	return e.collect(n, n, time.Duration(n/50+90)*time.Second)
}

// exactly is inbound, and then checks for a while that no record comes
// after the n-th.
func (e *env) exactly(n int) []events.Inbound {
	e.t.Helper()
	if n > 0 {
		e.inbound(n)
	}
	return e.collect(n+1, n, 2*time.Second)
}

func (e *env) collect(ask, want int, timeout time.Duration) []events.Inbound {
	e.t.Helper()
	recs := testenv.Collect(e.t, e.bus, events.TopicInbound, ask, timeout)
	var out []events.Inbound
	for _, r := range recs {
		in, err := events.DecodeInbound(r.Event())
		if err != nil {
			e.t.Fatalf("mail.inbound record %d: %v", r.Offset, err)
		}
		out = append(out, in)
	}
	if len(out) != want {
		e.t.Fatalf("mail.inbound holds %d records, want %d", len(out), want)
	}
	return out
}

// deliverAll publishes a mail.status "delivered" for every recipient of
// every record, as the relay does after final delivery.
func (e *env) deliverAll(ins []events.Inbound, outcome string) {
	e.t.Helper()
	var msgs []msgbus.Message
	for _, in := range ins {
		for _, r := range in.Recipients {
			st := events.Status{InboundID: in.ID, Stage: "relay", Recipient: r, Outcome: outcome, At: time.Now().UTC(), Source: in.Source, Site: "hq"}
			if outcome == events.OutcomeDeferred {
				st.NextAttempt = time.Now().Add(time.Hour)
			}
			rec, err := st.Encode()
			if err != nil {
				e.t.Fatal(err)
			}
			msgs = append(msgs, msgbus.NewMessage(events.TopicStatus, rec))
		}
	}
	if err := e.bus.Publish(context.Background(), msgs...); err != nil {
		e.t.Fatal(err)
	}
}

// runStatus runs d's status consumer for the rest of the test.
func runStatus(t *testing.T, d *Downloader) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.RunStatus(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("status consumer: %v", err)
		}
	})
}

// waitDelivered waits (bounded) until the ledger shows every recipient of
// message uidl of account done.
func (e *env) waitDelivered(account string, uidls ...string) {
	e.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for _, u := range uidls {
		for {
			le, err := e.store.Ledger().Get(context.Background(), account, u)
			if err == nil && le.AllDelivered() {
				break
			}
			if time.Now().After(deadline) {
				e.t.Fatalf("ledger entry %s/%s not delivered in time: %+v, %v", account, u, le, err)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// genMessage returns a CRLF message of about size bytes with an 8-bit
// header and body lines that start with ".", "..", or are a lone ".".
func genMessage(seed uint64, size int, header string) []byte {
	rng := rand.New(rand.NewPCG(seed, 42))
	var b bytes.Buffer
	b.WriteString(header)
	fmt.Fprintf(&b, "From: Sender <sender@example.net>\r\n")
	fmt.Fprintf(&b, "Subject: Gr\xc3\xbc\xc3\x9fe #%d\r\n", seed)
	fmt.Fprintf(&b, "Message-ID: <%d.%d@example.net>\r\n", seed, size)
	fmt.Fprintf(&b, "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n")
	b.WriteString(".first body line starts with a dot\r\n..two dots\r\n.\r\n...\r\n")
	const chars = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,;:-"
	for b.Len() < size {
		switch rng.IntN(20) {
		case 0:
			b.WriteString(".\r\n")
		case 1:
			b.WriteString("..")
		case 2:
			b.WriteString(".")
		case 3:
			b.WriteString("Sch\xc3\xb6ne Gr\xc3\xbc\xc3\x9fe ")
		}
		n := rng.IntN(200)
		if rng.IntN(50) == 0 {
			n = 900 + rng.IntN(98)
		}
		for range n {
			b.WriteByte(chars[rng.IntN(len(chars))])
		}
		b.WriteString("\r\n")
	}
	return b.Bytes()
}

// checkSame fails unless every message of want reached mail.inbound byte
// for byte, once.
func checkSame(t *testing.T, got []events.Inbound, want map[string][]byte) {
	t.Helper()
	seen := map[string]bool{}
	for _, in := range got {
		msg := in.Message
		var match string
		for k, w := range want {
			if bytes.Equal(w, msg) {
				match = k
			}
		}
		if match == "" {
			t.Errorf("record %s (uidl %s, %d bytes) matches no message of the mailbox", in.ID, in.Source.POP3UIDL, len(msg))
			continue
		}
		if seen[match] {
			t.Errorf("message %s reached mail.inbound twice", match)
		}
		seen[match] = true
	}
	for k := range want {
		if !seen[k] {
			t.Errorf("message %s never reached mail.inbound", k)
		}
	}
}

func mustNoErr(t *testing.T, what string, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}
