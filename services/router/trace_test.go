package router

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/api/events"
	"github.com/postern/postern/internal/app"
	"github.com/postern/postern/internal/config"
	"github.com/postern/postern/internal/msgbus"
	"github.com/postern/postern/internal/opshttp"
	"github.com/postern/postern/internal/replica"
	"github.com/postern/postern/internal/sitestate"
	"github.com/postern/postern/services/router/trace"
)

// TestMessageTrace follows messages the way an operator does, through the
// router's side server: a POP3 message the router itself routes (one
// recipient delivered, one refused), a submission deferred once then
// delivered, and a bounce without a Message-ID. The relay's statuses are
// published to mail.status as the relay writes them, one of them twice (a
// relay killed between its publish and its commit): it is listed once.
func TestMessageTrace(t *testing.T) {
	rt := startRuntime(t)
	ctx, cancel := context.WithCancel(context.Background())
	cfg := DefaultConfig()
	cfg.ReportingMTA = "mx.example.com"
	cfg.HTTP.Listen = "127.0.0.1:0"
	svc, err := New(cfg, rt)
	if err != nil {
		t.Fatal(err)
	}
	// The side server as app.Run builds it, from the unit's routes.
	u := svc.Unit()
	srv := opshttp.New(u.HTTP, opshttp.Options{Service: "router", Routes: u.Routes, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Shutdown(context.Background()) })
	base := "http://" + srv.Addr()

	done := make(chan error, 1)
	go func() { done <- svc.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Errorf("Run did not return within 30s of cancel")
		}
	})

	site, _ := json.Marshal(map[string]any{"id": "hq", "name": "hq", "domains": []string{"example.com"}})
	alice, _ := json.Marshal(map[string]any{"id": "u-alice", "username": "alice", "primary_address": "alice@example.com", "site": "hq",
		"enabled": true, "permissions": map[string]bool{"internet_receive": true, "internet_send": true}})
	if err := rt.State.Directory().Apply(ctx, sitestate.ChangeSet{Snapshot: true, Cursor: "1", Put: []sitestate.Entry{
		{Kind: replica.KindSite, ID: "hq", Version: 1, Data: site, Keys: []string{"example.com"}},
		{Kind: replica.KindUser, ID: "u-alice", Version: 1, Data: alice, Keys: []string{"alice", "alice@example.com"}},
	}}); err != nil {
		t.Fatal(err)
	}

	// Message A: downloaded from a POP3 account, routed by this router.
	pop3 := events.Source{Kind: events.SourcePOP3, POP3Account: "acct-1", POP3UIDL: "uidl-77"}
	in := events.Inbound{ID: "in-a", Site: "hq", MailFrom: "c@customer.net", Recipients: []string{"alice@example.com", "nobody@example.com"},
		Source: pop3, ReceivedAt: time.Now().UTC(),
		Message: []byte("From: c@customer.net\r\nTo: alice@example.com, nobody@example.com\r\nMessage-ID: <A1@Customer.NET>\r\nSubject: order\r\n\r\nhello\r\n")}
	rec, err := in.Encode()
	if err != nil {
		t.Fatal(err)
	}
	if err := rt.Bus.Publish(ctx, msgbus.NewMessage(events.TopicInbound, rec)); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now().UTC().Truncate(time.Millisecond)
	deliveredA := events.Status{InboundID: "in-a", DeliveryID: "in-a:local:u-alice", Site: "hq", Stage: "relay",
		Recipient: "alice@example.com", Outcome: events.OutcomeDelivered, At: t0.Add(time.Second), MessageID: "<A1@Customer.NET>",
		Source: pop3, Attempt: 1, Destination: events.DestLocal}
	republished := deliveredA
	republished.At = deliveredA.At.Add(3 * time.Second) // the same outcome, written again later
	smtp := events.Source{Kind: events.SourceSMTP, SMTPSession: "sess-9", SMTPRemote: "192.0.2.10:50123", SMTPHelo: "laptop", AuthUser: "u-alice"}
	next := t0.Add(time.Minute)
	statuses := []events.Status{
		deliveredA,
		republished,
		// Message B: a submission to the Internet, deferred, then delivered.
		{InboundID: "in-b", DeliveryID: "in-b:outbound", Site: "hq", Stage: "relay", Recipient: "bob@outside.example",
			Outcome: events.OutcomeDeferred, Reason: "451 4.7.1 greylisted, try again later", SMTPCode: 451, NextAttempt: next,
			At: t0, MessageID: "<b2@example.com>", Source: smtp, Attempt: 1, Destination: events.DestOutbound},
		{InboundID: "in-b", DeliveryID: "in-b:outbound", Site: "hq", Stage: "relay", Recipient: "bob@outside.example",
			Outcome: events.OutcomeDelivered, SMTPCode: 250, At: next.Add(time.Second), MessageID: "<b2@example.com>",
			Source: smtp, Attempt: 2, Destination: events.DestOutbound},
		// Message C: no Message-ID; bounced.
		{InboundID: "in-c", DeliveryID: "in-c:outbound", Site: "hq", Stage: "relay", Recipient: "x@nowhere.example",
			Outcome: events.OutcomeBounced, Reason: "550 5.1.1 user unknown", SMTPCode: 550, At: t0,
			Source: smtp, Attempt: 1, Destination: events.DestOutbound},
	}
	var msgs []msgbus.Message
	for _, st := range statuses {
		r, err := st.Encode()
		if err != nil {
			t.Fatal(err)
		}
		msgs = append(msgs, msgbus.NewMessage(events.TopicStatus, r))
	}
	if err := rt.Bus.Publish(ctx, msgs...); err != nil {
		t.Fatal(err)
	}
	// A last record of in-a, on the same partition (statuses are keyed by
	// inbound id) after the duplicate: once it is in the trace, so is
	// whatever the duplicate did.
	last := events.Status{InboundID: "in-a", DeliveryID: "in-a:local:u-alice", Site: "hq", Stage: "relay",
		Recipient: "alice@example.com", Outcome: events.OutcomeDelivered, At: t0.Add(5 * time.Second), MessageID: "<A1@Customer.NET>",
		Source: pop3, Attempt: 2, Destination: events.DestLocal}
	r, err := last.Encode()
	if err != nil {
		t.Fatal(err)
	}
	if err := rt.Bus.Publish(ctx, msgbus.NewMessage(events.TopicStatus, r)); err != nil {
		t.Fatal(err)
	}

	// Message A, asked for as a person would paste it: brackets, any case
	// in the domain. Wait for the router's refusal and the last record.
	var doc trace.Document
	deadline := time.Now().Add(60 * time.Second)
	for {
		code, body := get(t, base+trace.Path+"?message_id="+url.QueryEscape("<A1@customer.net>"))
		if code == http.StatusOK {
			doc = trace.Document{}
			if err := json.Unmarshal([]byte(body), &doc); err != nil {
				t.Fatalf("trace of A: %v\n%s", err, body)
			}
			if n := countEvents(doc); n >= 3 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("trace of A not complete in 60s: %d %s", code, body)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if doc.Site != "hq" || doc.MessageID != "A1@customer.net" || len(doc.Messages) != 1 {
		t.Fatalf("trace of A = %+v, want site hq, message id A1@customer.net, one inbound record", doc)
	}
	m := doc.Messages[0]
	if m.ReceivedAt.IsZero() || m.ReceivedAt.Sub(in.ReceivedAt).Abs() > time.Millisecond {
		t.Errorf("A received at %v, want %v (the inbound record's, carried by the statuses)", m.ReceivedAt, in.ReceivedAt)
	}
	if m.InboundID != "in-a" || m.Source != (trace.Source{Kind: "pop3", POP3Account: "acct-1", POP3UIDL: "uidl-77"}) {
		t.Errorf("where A came from: %+v / %+v, want in-a from POP3 account acct-1 UIDL uidl-77", m.InboundID, m.Source)
	}
	byRcpt := map[string]trace.Recipient{}
	for _, r := range m.Recipients {
		byRcpt[r.Recipient] = r
	}
	if a := byRcpt["alice@example.com"]; a.Destination != events.DestLocal || a.State != events.OutcomeDelivered ||
		len(a.Events) != 2 || a.Events[0].Attempt != 1 || !a.Events[0].At.Equal(deliveredA.At) || a.Events[1].Attempt != 2 {
		t.Errorf("alice in A: %+v; want local, delivered, the republished outcome listed once (attempt 1 at %v, then 2)", a, deliveredA.At)
	}
	if n := byRcpt["nobody@example.com"]; n.State != events.OutcomeRejected || n.Destination != "" || len(n.Events) != 1 ||
		n.Events[0].Stage != "router" || !strings.Contains(n.Events[0].Reason, "5.1.1") {
		t.Errorf("nobody in A: %+v; want one router rejection with 5.1.1", n)
	}

	// Message B: deferred with its next attempt, then delivered.
	code, body := get(t, base+trace.Path+"?message_id=b2@example.com")
	if code != http.StatusOK {
		t.Fatalf("trace of B: %d %s", code, body)
	}
	doc = trace.Document{}
	if err := json.Unmarshal([]byte(body), &doc); err != nil {
		t.Fatal(err)
	}
	if len(doc.Messages) != 1 || len(doc.Messages[0].Recipients) != 1 {
		t.Fatalf("trace of B = %s", body)
	}
	b := doc.Messages[0].Recipients[0]
	if b.Recipient != "bob@outside.example" || b.Destination != events.DestOutbound || b.State != events.OutcomeDelivered || len(b.Events) != 2 ||
		b.Events[0].Outcome != events.OutcomeDeferred || b.Events[0].SMTPCode != 451 || !b.Events[0].NextAttempt.Equal(next) ||
		b.Events[1].Outcome != events.OutcomeDelivered || b.Events[1].Attempt != 2 {
		t.Errorf("bob in B: %+v; want outbound, deferred (451, next attempt %v) then delivered at attempt 2", b, next)
	}
	if s := doc.Messages[0].Source; s.Kind != "smtp" || s.SMTPRemote != "192.0.2.10:50123" || s.AuthUser != "u-alice" {
		t.Errorf("where B came from: %+v", s)
	}

	// Message C has no Message-ID: found by its inbound id.
	code, body = get(t, base+trace.Path+"?inbound_id=in-c")
	if code != http.StatusOK || !strings.Contains(body, `"state": "bounced"`) || !strings.Contains(body, "550 5.1.1 user unknown") {
		t.Errorf("trace of in-c: %d %s", code, body)
	}
	// And A by its inbound id too.
	if code, body := get(t, base+trace.Path+"?inbound_id=in-a"); code != http.StatusOK || !strings.Contains(body, "alice@example.com") {
		t.Errorf("trace of in-a: %d %s", code, body)
	}

	// Unknown and malformed ids.
	for _, tc := range []struct {
		query string
		code  int
		says  string
	}{
		{"?message_id=" + url.QueryEscape("<never@seen.example>"), http.StatusNotFound, "no status record of Message-ID <never@seen.example>"},
		{"?inbound_id=nope", http.StatusNotFound, "no status record of inbound id nope"},
		{"", http.StatusBadRequest, "exactly one of message_id"},
		{"?message_id=a@b&inbound_id=in-a", http.StatusBadRequest, "exactly one of message_id"},
		{"?message_id=" + url.QueryEscape("<a@b> <c@d>"), http.StatusBadRequest, "is not a Message-ID"},
	} {
		code, body := get(t, base+trace.Path+tc.query)
		var p trace.Problem
		if code != tc.code || json.Unmarshal([]byte(body), &p) != nil || p.Status != tc.code || !strings.Contains(p.Detail, tc.says) {
			t.Errorf("GET %s%s = %d %s; want %d saying %q", trace.Path, tc.query, code, body, tc.code, tc.says)
		}
	}

	// The duplicate is counted as such.
	w := httptest.NewRecorder()
	rt.Telemetry.MetricsHandler().ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	if !strings.Contains(w.Body.String(), `postern_router_trace_records_total{`) || !strings.Contains(w.Body.String(), `result="duplicate"`) {
		t.Errorf("/metrics has no duplicate trace record")
	}
	if !slices.ContainsFunc(u.Routes, func(r opshttp.Route) bool { return r.Path() == trace.Path }) {
		t.Errorf("the unit's routes %v lack %s", u.Routes, trace.Path)
	}
}

// TestMessageTraceOff: with router.trace.enabled false nothing consumes
// mail.status for traces and the endpoint says tracing is off.
func TestMessageTraceOff(t *testing.T) {
	rt := startRuntime(t)
	cfg := DefaultConfig()
	cfg.ReportingMTA = "mx.example.com"
	cfg.Trace.Enabled = false
	svc, err := New(cfg, rt)
	if err != nil {
		t.Fatal(err)
	}
	if svc.indexer != nil {
		t.Error("an indexer with tracing off")
	}
	srv := httptest.NewServer(svc.traceHTTP)
	defer srv.Close()
	code, body := get(t, srv.URL+"?message_id=a@b")
	if code != http.StatusNotFound || !strings.Contains(body, "router.trace.enabled") {
		t.Errorf("lookup with tracing off = %d %s", code, body)
	}
}

// TestMessageTraceToken: with router.trace.token the side server answers
// the trace only to a request that carries it, while /healthz (for the
// container's and Prometheus's checks) stays open.
func TestMessageTraceToken(t *testing.T) {
	rt := startRuntime(t)
	cfg := DefaultConfig()
	cfg.ReportingMTA = "mx.example.com"
	cfg.HTTP.Listen = "127.0.0.1:0"
	cfg.Trace.Token = "s3cret-trace-token-0123456789"
	svc, err := New(cfg, rt)
	if err != nil {
		t.Fatal(err)
	}
	u := svc.Unit()
	srv := opshttp.New(u.HTTP, opshttp.Options{Service: "router", Routes: u.Routes, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Shutdown(context.Background()) })
	base := "http://" + srv.Addr()
	ask := func(token string) (int, string) {
		t.Helper()
		req, err := http.NewRequest(http.MethodGet, base+trace.Path+"?message_id=a@b", nil)
		if err != nil {
			t.Fatal(err)
		}
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := ask(""); code != http.StatusUnauthorized {
		t.Errorf("without the token: %d %s, want 401", code, body)
	}
	if code, body := ask("not-the-token-0123456789"); code != http.StatusUnauthorized {
		t.Errorf("with a wrong token: %d %s, want 401", code, body)
	}
	if code, body := ask(cfg.Trace.Token.Reveal()); code != http.StatusNotFound || !strings.Contains(body, "no status record") {
		t.Errorf("with the token: %d %s, want the lookup's 404", code, body)
	}
	if code, body := get(t, base+"/healthz"); code != http.StatusOK {
		t.Errorf("/healthz with a trace token: %d %s, want 200 without one", code, body)
	}
}

// TestTraceTokenRequiredBeyondLoopback: a side server that listens beyond
// the loopback interface with tracing on needs router.trace.token; the
// error names both keys and the configuration loads once it is set (as
// POSTERN_ROUTER_TRACE_TOKEN, the way the compose files set it).
func TestTraceTokenRequiredBeyondLoopback(t *testing.T) {
	for _, listen := range []string{"127.0.0.1:9182", "[::1]:9182", "localhost:9182"} {
		c := DefaultConfig()
		c.HTTP.Listen = listen
		if err := config.Validate(&c); err != nil {
			t.Errorf("listen %s without a token: %v", listen, err)
		}
	}
	for _, listen := range []string{"0.0.0.0:9182", ":9182", "[::]:9182", "192.0.2.7:9182", "router:9182"} {
		c := DefaultConfig()
		c.HTTP.Listen = listen
		err := config.Validate(&c)
		if keys := config.Keys(err); !slices.Equal(keys, []string{"trace.token"}) {
			t.Errorf("listen %s without a token: errors for %v, want [trace.token]", listen, keys)
			continue
		}
		if msg := err.Error(); !strings.Contains(msg, "router.http.listen") || !strings.Contains(msg, "router.trace.enabled") || !strings.Contains(msg, listen) {
			t.Errorf("listen %s: the error does not say why: %v", listen, err)
		}
		c.Trace.Enabled = false
		if err := config.Validate(&c); err != nil {
			t.Errorf("listen %s, tracing off: %v", listen, err)
		}
	}

	// As the router binary loads its file.
	path := filepath.Join(t.TempDir(), "router.yaml")
	if err := os.WriteFile(path, []byte("router:\n  http:\n    listen: 0.0.0.0:9182\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	load := func(environ ...string) error {
		cfg := struct {
			app.Common `yaml:",inline"`
			Router     Config `yaml:"router"`
		}{Common: app.DefaultCommon(), Router: DefaultConfig()}
		return config.Load(path, environ, &cfg)
	}
	if err := load(); !slices.Contains(config.Keys(err), "router.trace.token") || !strings.Contains(err.Error(), "router.http.listen") {
		t.Errorf("loaded without a token: %v, want an error about router.trace.token and router.http.listen", err)
	}
	const token = "s3cret-trace-token-0123456789"
	if err := load("POSTERN_ROUTER_TRACE_TOKEN=" + token); err != nil {
		t.Errorf("with POSTERN_ROUTER_TRACE_TOKEN: %v", err)
	}
	if err := load("POSTERN_ROUTER_TRACE_TOKEN=short"); err == nil || strings.Contains(err.Error(), "short") {
		t.Errorf("a short token: %v, want an error that does not quote it", err)
	}
}

func countEvents(doc trace.Document) int {
	n := 0
	for _, m := range doc.Messages {
		for _, r := range m.Recipients {
			n += len(r.Events)
		}
	}
	return n
}

func get(t *testing.T, u string) (int, string) {
	t.Helper()
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Get(u)
	if err != nil {
		t.Fatalf("GET %s: %v", u, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}
