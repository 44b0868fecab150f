package trace

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/api/events"
	"github.com/postern/postern/internal/config"
	"github.com/postern/postern/internal/msgbus"
	"github.com/postern/postern/internal/sitestate"
)

func openState(t *testing.T) sitestate.Store {
	t.Helper()
	s, err := sitestate.OpenSQLite(t.Context(), filepath.Join(t.TempDir(), "site.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func newIndexer(t *testing.T, s sitestate.Store, cfg Config) *Indexer {
	t.Helper()
	x, err := NewIndexer(cfg, s.TraceIndex(), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	return x
}

var t0 = time.Date(2026, 11, 21, 10, 0, 0, 0, time.UTC)

func status(inbound, rcpt, outcome string, attempt int, at time.Time) events.Status {
	st := events.Status{InboundID: inbound, DeliveryID: inbound + ":d", Site: "hq", Stage: "relay", Recipient: rcpt,
		Outcome: outcome, At: at, MessageID: "<M1@Example.COM>", Attempt: attempt, Destination: events.DestOutbound,
		Source: events.Source{Kind: events.SourceSMTP, SMTPSession: "s1", SMTPRemote: "192.0.2.1:2525", AuthUser: "u1"}}
	if outcome == events.OutcomeDeferred {
		st.NextAttempt = at.Add(time.Minute)
		st.SMTPCode = 451
	}
	return st
}

func record(t *testing.T, st events.Status) msgbus.Record {
	t.Helper()
	r, err := st.Encode()
	if err != nil {
		t.Fatal(err)
	}
	return msgbus.Record{Message: msgbus.NewMessage(events.TopicStatus, r)}
}

func TestConfig(t *testing.T) {
	if err := config.Validate(new(DefaultConfig())); err != nil {
		t.Fatalf("defaults refused: %v", err)
	}
	c := DefaultConfig()
	if c.Retention != 14*24*time.Hour || c.MaxRecords != 1000 || !c.Enabled {
		t.Errorf("defaults = %+v, want on, 14 days, 1000 records", c)
	}
	c.Retention, c.MaxRecords, c.ConsumerGroup = 59*time.Minute, sitestate.MaxTraceEntries+1, "a\tb"
	if keys := config.Keys(config.Validate(&c)); !slices.Equal(keys, []string{"retention", "max_records", "consumer_group"}) {
		t.Errorf("errors for %v", keys)
	}
}

func TestKeys(t *testing.T) {
	k, id, err := MessageIDKey("  <Abc@Example.COM> ")
	if err != nil || k != "msgid:Abc@example.com" || id != "Abc@example.com" {
		t.Errorf("MessageIDKey = %q, %q, %v", k, id, err)
	}
	for _, bad := range []string{"", "<>", "<a@b> <c@d>", "a b"} {
		if _, _, err := MessageIDKey(bad); !errors.Is(err, sitestate.ErrInvalid) {
			t.Errorf("MessageIDKey(%q) = %v, want ErrInvalid", bad, err)
		}
	}
	if k, err := InboundKey("01J9Z-abc"); err != nil || k != "inbound:01J9Z-abc" {
		t.Errorf("InboundKey = %q, %v", k, err)
	}
	for _, bad := range []string{"", "a b", "a\x00", strings.Repeat("x", 257), "\xff"} {
		if _, err := InboundKey(bad); !errors.Is(err, sitestate.ErrInvalid) {
			t.Errorf("InboundKey(%q) = %v, want ErrInvalid", bad, err)
		}
	}
}

// TestEntryID: the id says which outcome a record reports, not when it
// was written, so the same outcome republished is one entry.
func TestEntryID(t *testing.T) {
	a := status("in1", "bob@x.example", events.OutcomeDelivered, 1, t0)
	again := a
	again.At = t0.Add(time.Hour)
	again.Recipient = "Bob@X.example"
	if EntryID(a) != EntryID(again) {
		t.Error("the same outcome at another time has another id")
	}
	for _, change := range []func(*events.Status){
		func(s *events.Status) { s.InboundID = "in2" },
		func(s *events.Status) { s.DeliveryID = "other" },
		func(s *events.Status) { s.Stage = "router" },
		func(s *events.Status) { s.Recipient = "carol@x.example" },
		func(s *events.Status) { s.Outcome = events.OutcomeBounced },
		func(s *events.Status) { s.Attempt = 2 },
	} {
		b := a
		change(&b)
		if EntryID(b) == EntryID(a) {
			t.Errorf("%+v and %+v share an id", a, b)
		}
	}
	// Fields are delimited: moving a character from one to the next is
	// another id.
	b, c := a, a
	b.InboundID, b.DeliveryID = "ab", "c"
	c.InboundID, c.DeliveryID = "a", "bc"
	if EntryID(b) == EntryID(c) {
		t.Error("ids are ambiguous across fields")
	}
}

func TestIndexer(t *testing.T) {
	ctx := t.Context()
	s := openState(t)
	x := newIndexer(t, s, DefaultConfig())
	st := status("in1", "bob@x.example", events.OutcomeDeferred, 1, t0)
	st.Reason = strings.Repeat("é", 3000) // longer than kept
	for i, want := range []string{"indexed", "duplicate"} {
		got, err := x.Index(ctx, st)
		if err != nil || got != want {
			t.Errorf("Index #%d = %q, %v; want %q", i+1, got, err, want)
		}
	}
	// Both keys hold it, the reason clipped on a character boundary.
	for _, key := range []string{"inbound:in1", "msgid:M1@example.com"} {
		tr, err := s.TraceIndex().List(ctx, key)
		if err != nil || len(tr.Entries) != 1 {
			t.Fatalf("List(%s) = %+v, %v", key, tr, err)
		}
		var got events.Status
		if err := json.Unmarshal(tr.Entries[0].Data, &got); err != nil {
			t.Fatal(err)
		}
		if len(got.Reason) > maxReason+len("…") || !strings.HasSuffix(got.Reason, "…") || !strings.HasPrefix(got.Reason, "éé") || !json.Valid([]byte(`"`+got.Reason+`"`)) {
			t.Errorf("stored reason of %d bytes: %.20q…", len(got.Reason), got.Reason)
		}
	}
	// No Message-ID, or one that cannot be a key: indexed by inbound id.
	st2 := status("in2", "bob@x.example", events.OutcomeBounced, 1, t0)
	st2.MessageID = "<a@b> <c@d>"
	if got, err := x.Index(ctx, st2); err != nil || got != "indexed" {
		t.Errorf("Index with a bad Message-ID = %q, %v", got, err)
	}
	if _, err := s.TraceIndex().List(ctx, "inbound:in2"); err != nil {
		t.Errorf("in2 not indexed by inbound id: %v", err)
	}
	// Neither id usable.
	st3 := status(strings.Repeat("x", 300), "bob@x.example", events.OutcomeBounced, 1, t0)
	st3.MessageID = ""
	if got, err := x.Index(ctx, st3); err != nil || got != "untraceable" {
		t.Errorf("Index of an untraceable status = %q, %v", got, err)
	}

	// Handle: a record that is not a status is dead-lettered.
	if _, err := x.Handle(ctx, msgbus.Record{Message: msgbus.Message{Topic: events.TopicStatus, Value: []byte("{}")}}); !msgbus.IsPermanent(err) {
		t.Errorf("Handle of a malformed record = %v, want a permanent error", err)
	}
	if outs, err := x.Handle(ctx, record(t, status("in3", "c@x.example", events.OutcomeDelivered, 1, t0))); err != nil || len(outs) != 0 {
		t.Errorf("Handle = %v, %v; want nothing published", outs, err)
	}
	// A state that does not answer is a temporary error.
	s.Close()
	if _, err := x.Handle(ctx, record(t, status("in4", "c@x.example", events.OutcomeDelivered, 1, t0))); err == nil || msgbus.IsPermanent(err) {
		t.Errorf("Handle with the state closed = %v, want a temporary error", err)
	}
}

func serve(t *testing.T, h http.Handler, query string) (int, string, http.Header) {
	t.Helper()
	w := httptest.NewRecorder()
	h.ServeHTTP(w, httptest.NewRequest(http.MethodGet, Path+query, nil))
	return w.Code, w.Body.String(), w.Header()
}

func TestHandler(t *testing.T) {
	ctx := t.Context()
	s := openState(t)
	cfg := DefaultConfig()
	x := newIndexer(t, s, cfg)
	h := &Handler{Site: "hq", Index: s.TraceIndex()}
	// Indexed out of order; the handler orders each recipient's events.
	rejected := status("in1", "nobody@example.com", events.OutcomeRejected, 0, t0)
	rejected.Stage, rejected.DeliveryID, rejected.Destination, rejected.Reason = "router", "", "", "5.1.1 no such mailbox"
	rejected.ReceivedAt = t0.Add(-time.Second)
	expanded := status("in1", "manager@example.com", events.OutcomeDelivered, 1, t0.Add(time.Second))
	expanded.OriginalRecipient, expanded.Destination = "sales@example.com", events.DestLocal
	for _, st := range []events.Status{
		status("in1", "bob@x.example", events.OutcomeDelivered, 2, t0.Add(2*time.Minute)),
		status("in1", "bob@x.example", events.OutcomeDeferred, 1, t0),
		rejected, expanded,
		status("in2", "bob@x.example", events.OutcomeBounced, 1, t0.Add(time.Hour)),
	} {
		if _, err := x.Index(ctx, st); err != nil {
			t.Fatal(err)
		}
	}
	code, body, hdr := serve(t, h, "?message_id="+"%3CM1@example.com%3E")
	if code, body, _ := serve(t, h, "?message_id=%3Cnone@example.com%3E"); code != 404 || !strings.Contains(body, "Message-ID <none@example.com>") {
		t.Errorf("404 body %s: want the Message-ID in angle brackets, not escaped", body)
	}
	if code != 200 || hdr.Get("Content-Type") != "application/json" || hdr.Get("Cache-Control") != "no-store" {
		t.Fatalf("GET = %d %v %s", code, hdr, body)
	}
	var doc Document
	if err := json.Unmarshal([]byte(body), &doc); err != nil {
		t.Fatal(err)
	}
	if doc.Site != "hq" || doc.MessageID != "M1@example.com" || len(doc.Messages) != 2 ||
		doc.Messages[0].InboundID != "in1" || doc.Messages[1].InboundID != "in2" {
		t.Fatalf("document = %s", body)
	}
	m := doc.Messages[0]
	if !m.ReceivedAt.Equal(t0.Add(-time.Second)) || !doc.Messages[1].ReceivedAt.IsZero() {
		t.Errorf("received at %v and %v, want %v (from the status that says) and none", m.ReceivedAt, doc.Messages[1].ReceivedAt, t0.Add(-time.Second))
	}
	if m.MessageID != "M1@example.com" || m.Source.Kind != "smtp" || m.Source.AuthUser != "u1" || !m.FirstAt.Equal(t0) || !m.LastAt.Equal(t0.Add(2*time.Minute)) {
		t.Errorf("message in1 = %+v", m)
	}
	var names []string
	for _, r := range m.Recipients {
		names = append(names, r.Recipient+":"+r.State)
	}
	// nobody and bob start at the same moment: the router's refusal first.
	if want := []string{"nobody@example.com:rejected", "bob@x.example:delivered", "manager@example.com:delivered"}; !slices.Equal(names, want) {
		t.Fatalf("recipients = %v, want %v (in order of their first status)", names, want)
	}
	bob := m.Recipients[1]
	if len(bob.Events) != 2 || bob.Events[0].Outcome != "deferred" || bob.Events[0].SMTPCode != 451 || !bob.Events[0].NextAttempt.Equal(t0.Add(time.Minute)) ||
		bob.Events[1].Outcome != "delivered" || bob.Destination != "outbound" {
		t.Errorf("bob = %+v", bob)
	}
	if mg := m.Recipients[2]; mg.OriginalRecipient != "sales@example.com" || mg.Destination != "local" {
		t.Errorf("manager = %+v, want routed from sales@example.com to a local mailbox", mg)
	}
	if nb := m.Recipients[0]; nb.Destination != "" || nb.Events[0].Stage != "router" || nb.Events[0].Reason != "5.1.1 no such mailbox" {
		t.Errorf("nobody = %+v", nb)
	}

	// By inbound id: only that record.
	code, body, _ = serve(t, h, "?inbound_id=in2")
	if code != 200 || !strings.Contains(body, `"inbound_id": "in2"`) || strings.Contains(body, "in1") {
		t.Errorf("by inbound id: %d %s", code, body)
	}

	// Errors.
	for _, tc := range []struct {
		query string
		code  int
	}{
		{"", 400}, {"?message_id=", 400}, {"?message_id=a@b&inbound_id=x", 400}, {"?message_id=a@b&message_id=c@d", 400},
		{"?message_id=%3Ca@b", 400}, {"?inbound_id=a%20b", 400}, {"?message_id=unknown@example.com", 404}, {"?inbound_id=unknown", 404},
	} {
		code, body, hdr := serve(t, h, tc.query)
		var p Problem
		if code != tc.code || hdr.Get("Content-Type") != "application/problem+json" || json.Unmarshal([]byte(body), &p) != nil || p.Status != tc.code || p.Detail == "" {
			t.Errorf("GET %s = %d %s %s, want a %d problem", tc.query, code, hdr.Get("Content-Type"), body, tc.code)
		}
	}
	// A state that does not answer: 503, and no internal error text.
	s.Close()
	code, body, _ = serve(t, h, "?inbound_id=in1")
	if code != 503 || strings.Contains(body, "sql") || strings.Contains(body, "closed") {
		t.Errorf("with the state closed: %d %s", code, body)
	}
}

// TestBoundedTrace: past max_records the oldest records go and the
// document says how many.
func TestBoundedTrace(t *testing.T) {
	s := openState(t)
	cfg := DefaultConfig()
	cfg.MaxRecords = 3
	x := newIndexer(t, s, cfg)
	for i := range 5 {
		if _, err := x.Index(t.Context(), status("in1", "bob@x.example", events.OutcomeDeferred, i+1, t0.Add(time.Duration(i)*time.Minute))); err != nil {
			t.Fatal(err)
		}
	}
	code, body, _ := serve(t, &Handler{Site: "hq", Index: s.TraceIndex()}, "?inbound_id=in1")
	var doc Document
	if code != 200 || json.Unmarshal([]byte(body), &doc) != nil {
		t.Fatalf("%d %s", code, body)
	}
	ev := doc.Messages[0].Recipients[0].Events
	if doc.Dropped != 2 || len(ev) != 3 || ev[0].Attempt != 3 {
		t.Errorf("dropped %d, events %+v; want 2 dropped and attempts 3 to 5", doc.Dropped, ev)
	}
}

func TestFetch(t *testing.T) {
	s := openState(t)
	x := newIndexer(t, s, DefaultConfig())
	if _, err := x.Index(t.Context(), status("in1", "bob@x.example", events.OutcomeDelivered, 1, t0)); err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET "+Path, &Handler{Site: "hq", Index: s.TraceIndex()})
	srv := httptest.NewServer(mux)
	defer srv.Close()
	ctx := t.Context()

	doc, err := Fetch(ctx, srv.Client(), srv.URL+"/", Query{MessageID: "<M1@example.com>"})
	if err != nil || doc.Site != "hq" || len(doc.Messages) != 1 {
		t.Fatalf("Fetch = %+v, %v", doc, err)
	}
	_, err = Fetch(ctx, srv.Client(), srv.URL, Query{MessageID: "nobody@example.com"})
	if p, ok := errors.AsType[*Problem](err); !ok || p.Status != 404 || !strings.Contains(p.Detail, "no status record") {
		t.Errorf("Fetch of an unknown id = %v, want the 404 problem", err)
	}
	// Something that is not a router's side server.
	other := httptest.NewServer(http.NotFoundHandler())
	defer other.Close()
	_, err = Fetch(ctx, other.Client(), other.URL, Query{InboundID: "in1"})
	if p, ok := errors.AsType[*Problem](err); !ok || p.Status != 404 || !strings.Contains(p.Detail, "router.http.listen") {
		t.Errorf("Fetch from a plain 404 server = %v", err)
	}
	// Nobody listening.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	if _, err := Fetch(ctx, nil, "http://"+addr, Query{InboundID: "in1"}); !errors.Is(err, ErrUnreachable) || !strings.Contains(err.Error(), "cannot reach "+addr+": dial tcp") {
		t.Errorf("Fetch from a closed port = %v, want ErrUnreachable naming the address and the cause", err)
	}
	if _, err := Fetch(ctx, nil, "ftp://x", Query{InboundID: "in1"}); err == nil || errors.Is(err, ErrUnreachable) {
		t.Errorf("Fetch of an ftp URL = %v", err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := Fetch(cctx, srv.Client(), srv.URL, Query{InboundID: "in1"}); !errors.Is(err, context.Canceled) {
		t.Errorf("Fetch with a cancelled context = %v", err)
	}
}

// TestConfigToken: a trace token is checked for its shape, and an error
// never quotes it.
func TestConfigToken(t *testing.T) {
	for _, good := range []string{"0123456789abcdef", "k1+/Zm9vYmFyYmF6cXV4LW9rLg==", "a.b_c~d-e0123456789"} {
		c := DefaultConfig()
		c.Token = config.Secret(good)
		if err := config.Validate(&c); err != nil {
			t.Errorf("token %q refused: %v", good, err)
		}
	}
	for _, bad := range []string{"short-secret", "0123456789abcdef ghij", "0123456789abcdef\r\nX-Evil: 1", "0123456789=abcdef", "================"} {
		c := DefaultConfig()
		c.Token = config.Secret(bad)
		err := config.Validate(&c)
		if keys := config.Keys(err); !slices.Equal(keys, []string{"token"}) {
			t.Errorf("token %q: errors for %v, want [token]", bad, keys)
		}
		if err != nil && strings.Contains(err.Error(), bad) {
			t.Errorf("the error quotes the token: %v", err)
		}
	}
}

// TestHandlerToken: with a token the endpoint answers only a request that
// carries it; no token and a wrong one get the same 401 problem, before
// the query is even looked at.
func TestHandlerToken(t *testing.T) {
	s := openState(t)
	x := newIndexer(t, s, DefaultConfig())
	if _, err := x.Index(t.Context(), status("in1", "bob@x.example", events.OutcomeDelivered, 1, t0)); err != nil {
		t.Fatal(err)
	}
	const token = "s3cret-trace-token-0123456789"
	h := &Handler{Site: "hq", Index: s.TraceIndex(), Token: token}
	get := func(auth, query string) (int, string, http.Header) {
		w := httptest.NewRecorder()
		r := httptest.NewRequest(http.MethodGet, Path+query, nil)
		if auth != "" {
			r.Header.Set("Authorization", auth)
		}
		h.ServeHTTP(w, r)
		return w.Code, w.Body.String(), w.Header()
	}
	code, missing, hdr := get("", "?inbound_id=in1")
	var p Problem
	if code != http.StatusUnauthorized || hdr.Get("Content-Type") != "application/problem+json" || json.Unmarshal([]byte(missing), &p) != nil ||
		p.Status != 401 || !strings.Contains(p.Detail, "router.trace.token") || !strings.HasPrefix(hdr.Get("WWW-Authenticate"), "Bearer") {
		t.Errorf("without a token: %d %v %s, want a 401 problem", code, hdr, missing)
	}
	for _, auth := range []string{"Bearer wrong", "Bearer " + token + "x", "Bearer " + token[:len(token)-1], "Basic " + token, token, "Bearer"} {
		code, body, _ := get(auth, "?inbound_id=in1")
		if code != http.StatusUnauthorized || body != missing {
			t.Errorf("Authorization %q: %d %s, want the same 401 as without a token", auth, code, body)
		}
		if strings.Contains(body, "bob@") {
			t.Errorf("Authorization %q: the trace leaked: %s", auth, body)
		}
	}
	// Nothing about the query is answered without the token: a malformed
	// one is 401 too, not 400.
	if code, _, _ := get("", "?message_id=%3Ca@b"); code != http.StatusUnauthorized {
		t.Errorf("a malformed query without a token: %d, want 401", code)
	}
	for _, auth := range []string{"Bearer " + token, "bearer " + token} {
		code, body, _ := get(auth, "?inbound_id=in1")
		if code != http.StatusOK || !strings.Contains(body, "bob@x.example") {
			t.Errorf("Authorization %q: %d %s, want the trace", auth, code, body)
		}
	}
	if strings.Contains(missing, token) {
		t.Errorf("the 401 names the token: %s", missing)
	}
}

// TestFetchToken: Fetch sends the query's token as a bearer token, and a
// refusal comes back as the 401 problem.
func TestFetchToken(t *testing.T) {
	s := openState(t)
	x := newIndexer(t, s, DefaultConfig())
	if _, err := x.Index(t.Context(), status("in1", "bob@x.example", events.OutcomeDelivered, 1, t0)); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(&Handler{Site: "hq", Index: s.TraceIndex(), Token: "s3cret-trace-token-0123456789"})
	defer srv.Close()
	if doc, err := Fetch(t.Context(), srv.Client(), srv.URL, Query{InboundID: "in1", Token: "s3cret-trace-token-0123456789"}); err != nil || len(doc.Messages) != 1 {
		t.Errorf("Fetch with the token = %+v, %v", doc, err)
	}
	for _, token := range []string{"", "wrong-token-0123456789"} {
		_, err := Fetch(t.Context(), srv.Client(), srv.URL, Query{InboundID: "in1", Token: token})
		if p, ok := errors.AsType[*Problem](err); !ok || p.Status != http.StatusUnauthorized {
			t.Errorf("Fetch with token %q = %v, want the 401 problem", token, err)
		}
	}
}
