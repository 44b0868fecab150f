package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/postern/postern/api/events"
	"github.com/postern/postern/internal/config"
	"github.com/postern/postern/internal/sitestate"
	"github.com/postern/postern/services/router/trace"
)

// traceSite is a site's trace endpoint as the router mounts it, over a real
// SQLite trace index filled by the router's indexer.
func traceSite(t *testing.T, statuses ...events.Status) *httptest.Server {
	t.Helper()
	return traceSiteWithToken(t, "", statuses...)
}

// traceSiteWithToken is traceSite with router.trace.token set to token.
func traceSiteWithToken(t *testing.T, token string, statuses ...events.Status) *httptest.Server {
	t.Helper()
	s, err := sitestate.OpenSQLite(t.Context(), filepath.Join(t.TempDir(), "site.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	x, err := trace.NewIndexer(trace.DefaultConfig(), s.TraceIndex(), nil, log)
	if err != nil {
		t.Fatal(err)
	}
	for _, st := range statuses {
		if _, err := x.Index(t.Context(), st); err != nil {
			t.Fatal(err)
		}
	}
	mux := http.NewServeMux()
	mux.Handle("GET "+trace.Path, &trace.Handler{Site: "hq", Index: s.TraceIndex(), Token: config.Secret(token), Log: log})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv
}

func runTrace(t *testing.T, env map[string]string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errs bytes.Buffer
	code = traceCommand(context.Background(), args, func(k string) string { return env[k] }, &out, &errs)
	return code, out.String(), errs.String()
}

func TestTraceCommand(t *testing.T) {
	t0 := time.Date(2026, 11, 21, 10, 0, 0, 0, time.UTC)
	pop3 := events.Source{Kind: events.SourcePOP3, POP3Account: "acct-1", POP3UIDL: "uidl-77"}
	base := events.Status{InboundID: "in-a", Site: "hq", Stage: "relay", At: t0, MessageID: "<A1@Customer.NET>", Source: pop3, Attempt: 1,
		ReceivedAt: t0.Add(-2 * time.Second)}
	st := func(f func(*events.Status)) events.Status { s := base; f(&s); return s }
	srv := traceSite(t,
		st(func(s *events.Status) {
			s.DeliveryID, s.Recipient, s.OriginalRecipient, s.Destination, s.Outcome = "in-a:local:u-m", "manager@example.com", "sales@example.com", events.DestLocal, events.OutcomeDelivered
		}),
		st(func(s *events.Status) {
			s.Stage, s.Attempt, s.Recipient, s.Outcome, s.Reason = "router", 0, "nobody@example.com", events.OutcomeRejected, "5.1.1 no such mailbox"
		}),
		st(func(s *events.Status) {
			s.DeliveryID, s.Recipient, s.Destination, s.Outcome, s.SMTPCode = "in-a:outbound", "bob@outside.example", events.DestOutbound, events.OutcomeDeferred, 451
			s.Reason, s.NextAttempt = "4.7.1 greylisted\x1b[2J", t0.Add(time.Minute)
		}),
		st(func(s *events.Status) {
			s.DeliveryID, s.Recipient, s.Destination, s.Outcome, s.SMTPCode, s.Attempt, s.At = "in-a:outbound", "bob@outside.example", events.DestOutbound, events.OutcomeDelivered, 250, 2, t0.Add(61*time.Second)
		}),
		st(func(s *events.Status) {
			s.InboundID, s.MessageID, s.DeliveryID, s.Recipient, s.Destination, s.Outcome, s.SMTPCode, s.Reason =
				"in-c", "", "in-c:outbound", "x@nowhere.example", events.DestOutbound, events.OutcomeBounced, 550, "550 5.1.1 user unknown"
			s.Source = events.Source{Kind: events.SourceSMTP, SMTPRemote: "192.0.2.10:50123", SMTPHelo: "laptop", AuthUser: "u-alice", SMTPSession: "sess-9"}
		}),
	)

	// The timeline, asked for with the brackets and the site from the
	// environment, flags after the argument.
	code, out, errs := runTrace(t, map[string]string{"POSTERN_SITE_URL": srv.URL}, "<A1@customer.net>")
	if code != 0 || errs != "" {
		t.Fatalf("exit %d\nstdout: %s\nstderr: %s", code, out, errs)
	}
	for _, want := range []string{
		"Message-ID <A1@customer.net> at site hq\n",
		"\ninbound in-a\n",
		"\n  received  2026-11-21 09:59:58Z\n",
		"  from      POP3 account acct-1, UIDL uidl-77\n",
		"  nobody@example.com: rejected\n",
		"      2026-11-21 10:00:00Z  router  rejected  5.1.1 no such mailbox\n",
		"  sales@example.com → manager@example.com (local mailbox): delivered\n",
		"  bob@outside.example (outbound, through the smarthost): delivered\n",
		"2026-11-21 10:00:00Z  relay, attempt 1  deferred   451; 4.7.1 greylisted\uFFFD[2J; next attempt 2026-11-21 10:01:00Z\n",
		"2026-11-21 10:01:01Z  relay, attempt 2  delivered  250\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("timeline lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, " \n") {
		t.Errorf("trailing spaces:\n%q", out)
	}
	if strings.Contains(out, "\x1b") {
		t.Error("a control character from a remote reply reached the terminal")
	}
	// The router's refusal comes before the relay's outcomes.
	if strings.Index(out, "nobody@") > strings.Index(out, "bob@") {
		t.Errorf("recipients out of order:\n%s", out)
	}

	// --json is the endpoint's document; --site takes host:port too.
	code, out, _ = runTrace(t, nil, "--json", "--site", strings.TrimPrefix(srv.URL, "http://"), "A1@customer.net")
	var doc trace.Document
	if code != 0 || json.Unmarshal([]byte(out), &doc) != nil || doc.MessageID != "A1@customer.net" || len(doc.Messages) != 1 || len(doc.Messages[0].Recipients) != 3 {
		t.Errorf("--json: exit %d\n%s", code, out)
	}

	// By inbound id, for a message without a Message-ID.
	code, out, _ = runTrace(t, nil, "--site", srv.URL, "--inbound-id", "in-c")
	for _, want := range []string{"Inbound record in-c at site hq", "from      SMTP from 192.0.2.10:50123 (HELO laptop) authenticated as user u-alice session sess-9",
		"x@nowhere.example (outbound, through the smarthost): bounced", "550 5.1.1 user unknown"} {
		if code != 0 || !strings.Contains(out, want) {
			t.Errorf("--inbound-id: exit %d, output lacks %q:\n%s", code, want, out)
		}
	}
	if strings.Contains(out, "550; 550") {
		t.Errorf("the code is repeated before a reason that starts with it:\n%s", out)
	}
}

func TestTraceCommandErrors(t *testing.T) {
	srv := traceSite(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := "http://" + ln.Addr().String()
	ln.Close()
	notRouter := httptest.NewServer(http.NotFoundHandler())
	defer notRouter.Close()

	for _, tc := range []struct {
		args []string
		code int
		errs string
	}{
		{[]string{"--site", srv.URL, "<unknown@example.com>"}, 1, "site hq has no status record of Message-ID <unknown@example.com>"},
		{[]string{"--site", srv.URL, "--inbound-id", "nope"}, 1, "no status record of inbound id nope"},
		{[]string{"--site", closed, "a@b"}, 1, "cannot reach " + strings.TrimPrefix(closed, "http://") + ": dial tcp"},
		{[]string{"--site", notRouter.URL, "a@b"}, 1, "is it a router's side server"},
		{[]string{"--site", srv.URL}, 2, "trace wants one Message-ID, got 0"},
		{[]string{"--site", srv.URL, "a@b", "c@d"}, 2, "got 2 arguments"},
		{[]string{"--site", srv.URL, "<a@b> <c@d>"}, 2, "is not a Message-ID"},
		{[]string{"--site", srv.URL, "--inbound-id", "a b"}, 2, "is not an inbound id"},
		{[]string{"--site", "ftp://x", "a@b"}, 2, "--site"},
		{[]string{"--site", srv.URL, "--timeout", "0s", "a@b"}, 2, "--timeout"},
		{[]string{"--frobnicate", "a@b"}, 2, "flag provided but not defined"},
	} {
		code, out, errs := runTrace(t, nil, tc.args...)
		if code != tc.code || !strings.Contains(errs, tc.errs) || out != "" {
			t.Errorf("postern trace %s: exit %d (want %d)\nstdout: %s\nstderr: %s (want %q)", strings.Join(tc.args, " "), code, tc.code, out, errs, tc.errs)
		}
	}
	// -h is help, not an error.
	if code, _, errs := runTrace(t, nil, "-h"); code != 0 || !strings.Contains(errs, "usage: postern trace") || !strings.Contains(errs, "router.http.listen") {
		t.Errorf("-h: exit %d\n%s", code, errs)
	}
}

// The default site is the single-box router's side server.
func TestTraceDefaultSite(t *testing.T) {
	if defaultTraceSite != "http://"+DefaultServeConfig().Router.HTTP.Listen {
		t.Errorf("default --site %s, but the router's side server listens on %s", defaultTraceSite, DefaultServeConfig().Router.HTTP.Listen)
	}
	var out, errs bytes.Buffer
	if code := run(context.Background(), []string{"help"}, &out, &errs); code != 0 || !strings.Contains(out.String(), "trace <Message-ID>") {
		t.Errorf("usage does not list trace:\n%s", out.String())
	}
}

// TestTraceCommandToken: postern trace sends the site's trace token from
// $POSTERN_TRACE_TOKEN or --token as a bearer token, says what to do when
// the site refuses, and never prints the token.
func TestTraceCommandToken(t *testing.T) {
	const token = "s3cret-trace-token-0123456789"
	t0 := time.Date(2026, 11, 21, 10, 0, 0, 0, time.UTC)
	site := traceSiteWithToken(t, token, events.Status{InboundID: "in-a", DeliveryID: "in-a:outbound", Site: "hq", Stage: "relay", At: t0,
		MessageID: "<A1@customer.net>", Recipient: "bob@outside.example", Destination: events.DestOutbound, Outcome: events.OutcomeDelivered,
		Source: events.Source{Kind: events.SourceSMTP, SMTPSession: "s1"}, Attempt: 1})
	// What reaches the side server.
	var (
		mu  sync.Mutex
		got []string
	)
	sent := func() []string { mu.Lock(); defer mu.Unlock(); g := got; got = nil; return g }
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		got = append(got, r.Header.Get("Authorization"))
		mu.Unlock()
		r2, _ := http.NewRequestWithContext(r.Context(), r.Method, site.URL+r.URL.RequestURI(), nil)
		r2.Header = r.Header.Clone()
		resp, err := http.DefaultClient.Do(r2)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		for k, v := range resp.Header {
			w.Header()[k] = v
		}
		w.WriteHeader(resp.StatusCode)
		_, _ = io.Copy(w, resp.Body)
	}))
	defer srv.Close()

	// From the environment.
	code, out, errs := runTrace(t, map[string]string{"POSTERN_SITE_URL": srv.URL, "POSTERN_TRACE_TOKEN": token}, "A1@customer.net")
	if code != 0 || !strings.Contains(out, "bob@outside.example (outbound, through the smarthost): delivered") {
		t.Errorf("with $POSTERN_TRACE_TOKEN: exit %d\nstdout: %s\nstderr: %s", code, out, errs)
	}
	if got := sent(); len(got) != 1 || got[0] != "Bearer "+token {
		t.Errorf("Authorization sent: %q, want the bearer token", got)
	}
	// From --token, which wins over the environment.
	code, out, errs = runTrace(t, map[string]string{"POSTERN_TRACE_TOKEN": "stale-token-0123456789"}, "--site", srv.URL, "--token", token, "A1@customer.net")
	if got := sent(); code != 0 || len(got) != 1 || got[0] != "Bearer "+token {
		t.Errorf("with --token: exit %d, sent %q\nstdout: %s\nstderr: %s", code, got, out, errs)
	}
	// No token: no Authorization header, and the site's refusal.
	code, out, errs = runTrace(t, nil, "--site", srv.URL, "A1@customer.net")
	if got := sent(); code != 1 || out != "" || len(got) != 1 || got[0] != "" || !strings.Contains(errs, "router.trace.token") || !strings.Contains(errs, "POSTERN_TRACE_TOKEN") {
		t.Errorf("without a token: exit %d, sent %q\nstdout: %s\nstderr: %s", code, got, out, errs)
	}
	// A wrong one: refused, and not printed.
	code, out, errs = runTrace(t, map[string]string{"POSTERN_TRACE_TOKEN": "wrong-token-0123456789"}, "--site", srv.URL, "A1@customer.net")
	if code != 1 || out != "" || !strings.Contains(errs, "router.trace.token") || strings.Contains(errs, "wrong-token") {
		t.Errorf("with a wrong token: exit %d\nstdout: %s\nstderr: %s", code, out, errs)
	}
	// A token that cannot be a header value is a wrong command line.
	if code, _, errs := runTrace(t, nil, "--site", srv.URL, "--token", "a b", "A1@customer.net"); code != 2 || !strings.Contains(errs, "token") {
		t.Errorf("--token with a space: exit %d\n%s", code, errs)
	}
	// -h does not show the token from the environment.
	if code, out, errs := runTrace(t, map[string]string{"POSTERN_TRACE_TOKEN": token}, "-h"); code != 0 || strings.Contains(out+errs, token) || !strings.Contains(errs, "POSTERN_TRACE_TOKEN") {
		t.Errorf("-h: exit %d, shows the token or not the variable:\n%s%s", code, out, errs)
	}
}
