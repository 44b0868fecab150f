package routing

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/api/events"
	"github.com/postern/postern/internal/replica"
	"github.com/postern/postern/internal/sitestate"
)

// The test directory, as the users service's sync feed would replicate it:
//
//	sites:  hq (example.com, this site), branch (branch.example.org)
//	users:  alice  (hq, aliases a.archer@, postmaster@; receive+send)
//	        bob    (hq; receive only)
//	        carol  (branch, alias carol@example.com; receive+send)
//	        dave   (hq; disabled)
//	        erin   (hq; send only, no internet_receive)
//	        mia    (hq; manager of sales)
//	        zs     "Zhangsan" (hq; staff of sales and support; receive+send)
//	        ls     "Lisi"     (hq; staff of sales; send only, no internet_receive)
//	        zs2    "Zhangsan" (hq; staff of support; receive only, no internet_send)
//	groups: team@ = alice, sub; sub@ = bob, carol, erin, team (a cycle), alice again
//	        empty@ = dave (disabled only)
//	shared: sales@   "Sales":   manager mia, staff zs+ls, forward, rewrite, copy
//	        support@ "Support": manager alice, staff zs+zs2, no forward, no rewrite, copy
const (
	hq     = "hq"
	branch = "branch"
)

type perms struct{ recv, send bool }

func userEntry(id, username, display, primary, site string, enabled bool, p perms, aliases ...string) sitestate.Entry {
	data, _ := json.Marshal(map[string]any{
		"id": id, "version": 1, "username": username, "display_name": display,
		"primary_address": primary, "aliases": aliases, "site": site, "groups": []string{},
		"enabled": enabled, "permissions": map[string]bool{"internet_receive": p.recv, "internet_send": p.send},
		"quota_bytes": 0,
	})
	keys := []string{strings.ToLower(username), strings.ToLower(primary)}
	for _, a := range aliases {
		keys = append(keys, strings.ToLower(a))
	}
	return sitestate.Entry{Kind: replica.KindUser, ID: id, Version: 1, Data: data, Keys: keys}
}

func groupEntry(id, name, address string, members ...string) sitestate.Entry {
	var ms []map[string]string
	for _, m := range members {
		typ, mid, _ := strings.Cut(m, ":")
		ms = append(ms, map[string]string{"type": typ, "id": mid})
	}
	data, _ := json.Marshal(map[string]any{"id": id, "name": name, "address": address, "members": ms})
	return sitestate.Entry{Kind: replica.KindGroup, ID: id, Version: 1, Data: data, Keys: []string{name, address}}
}

func sharedEntry(id, address, display, manager string, staff []string, forward, rewrite, copyOut bool) sitestate.Entry {
	data, _ := json.Marshal(map[string]any{
		"id": id, "address": address, "display_name": display, "manager": manager, "staff": staff,
		"forward_to_staff": forward, "rewrite_sender": rewrite, "copy_outbound_to_manager": copyOut,
	})
	return sitestate.Entry{Kind: replica.KindSharedMailbox, ID: id, Version: 1, Data: data, Keys: []string{address}}
}

func siteEntry(name string, domains ...string) sitestate.Entry {
	data, _ := json.Marshal(map[string]any{"id": name, "name": name, "domains": domains, "smtp_endpoint": name + ".internal:25"})
	return sitestate.Entry{Kind: replica.KindSite, ID: name, Version: 1, Data: data, Keys: domains}
}

var all = perms{true, true}

func testDirectory() []sitestate.Entry {
	return []sitestate.Entry{
		siteEntry(hq, "example.com"),
		siteEntry(branch, "branch.example.org"),
		userEntry("u-alice", "alice", "Alice Archer", "alice@example.com", hq, true, all, "A.Archer@example.com", "postmaster@example.com"),
		userEntry("u-bob", "bob", "Bob Baker", "bob@example.com", hq, true, perms{recv: true}),
		userEntry("u-carol", "carol", "Carol Cole", "carol@branch.example.org", branch, true, all, "carol@example.com"),
		userEntry("u-dave", "dave", "Dave Dunn", "dave@example.com", hq, false, all),
		userEntry("u-erin", "erin", "Erin Eames", "erin@example.com", hq, true, perms{send: true}),
		userEntry("u-mia", "mia", "Mia Manager", "mia@example.com", hq, true, all),
		userEntry("u-zs", "zhangsan", "Zhangsan", "zhangsan@example.com", hq, true, all),
		userEntry("u-ls", "lisi", "Lisi", "lisi@example.com", hq, true, perms{send: true}),
		userEntry("u-zs2", "zhangsan2", "Zhangsan", "zhangsan2@example.com", hq, true, perms{recv: true}),
		groupEntry("g-team", "team", "team@example.com", "user:u-alice", "group:g-sub"),
		groupEntry("g-sub", "sub", "sub@example.com", "user:u-bob", "user:u-carol", "user:u-erin", "group:g-team", "user:u-alice", "user:u-ghost"),
		groupEntry("g-empty", "empty", "empty@example.com", "user:u-dave"),
		sharedEntry("sm-sales", "sales@example.com", "Sales", "u-mia", []string{"u-zs", "u-ls"}, true, true, true),
		sharedEntry("sm-support", "support@example.com", "Support", "u-alice", []string{"u-zs", "u-zs2"}, false, false, true),
	}
}

// newStore opens a real SQLite site state seeded with the test directory.
func newStore(t testing.TB) sitestate.Store {
	t.Helper()
	ctx := context.Background()
	st, err := sitestate.OpenSQLite(ctx, filepath.Join(t.TempDir(), "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	if err := st.Directory().Apply(ctx, sitestate.ChangeSet{Snapshot: true, Cursor: "1", Put: testDirectory()}); err != nil {
		t.Fatal(err)
	}
	return st
}

func newRouter(t testing.TB, st sitestate.Store, cfg Config) *Router {
	t.Helper()
	if cfg.Site == "" {
		cfg.Site = hq
	}
	r, err := New(cfg, st.Directory(), st.MessageIndex())
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// msg builds a CRLF message from header lines and a body.
func msg(body string, header ...string) []byte {
	return []byte(strings.Join(header, "\r\n") + "\r\n\r\n" + body)
}

var plain = msg("hello\r\n", "From: Customer <c@customer.net>", "To: someone@example.com", "Subject: hi", "Message-ID: <m1@customer.net>")

// inbound builds an inbound record. src is "pop3", "dsn" (a bounce Postern
// wrote), "smtp" (unauthenticated),
// "auth:<user id>" (submission) or "site:<name>" (another site).
func inbound(src, from string, raw []byte, rcpts ...string) events.Inbound {
	in := events.Inbound{
		ID: "in-1", Site: hq, MailFrom: from, Recipients: rcpts,
		ReceivedAt: time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC), Message: raw,
	}
	switch {
	case src == "pop3":
		in.Source = events.Source{Kind: events.SourcePOP3, POP3Account: "acc", POP3UIDL: "1"}
	case src == "dsn":
		in.Source = events.Source{Kind: events.SourceDSN}
	case src == "smtp":
		in.Source = events.Source{Kind: events.SourceSMTP, SMTPSession: "s"}
	case strings.HasPrefix(src, "auth:"):
		in.Source = events.Source{Kind: events.SourceSMTP, SMTPSession: "s", AuthUser: strings.TrimPrefix(src, "auth:")}
	case strings.HasPrefix(src, "site:"):
		in.Source = events.Source{Kind: events.SourceSMTP, SMTPSession: "s", AuthUser: src}
	default:
		panic(src)
	}
	return in
}

// summary is a delivery in a comparable form: "local:<user>",
// "site:<site>:<user>" or "outbound:<mail from>:<rcpt>,<rcpt>".
func summary(d events.Delivery) string {
	switch d.Destination {
	case events.DestLocal:
		return "local:" + d.Mailbox
	case events.DestSite:
		return "site:" + d.TargetSite + ":" + strings.TrimPrefix(d.ID, d.InboundID+":site:"+d.TargetSite+":")
	}
	return "outbound:" + d.MailFrom + ":" + strings.Join(d.Recipients, ",")
}

func rejection(r Rejection) string {
	b := "nobounce"
	if r.Bounce {
		b = "bounce"
	}
	return fmt.Sprintf("%s %s %s", r.Recipient, r.Status, b)
}
