package download

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http/httptest"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/postern/postern/api/events"
	"github.com/postern/postern/internal/msgbus"
	"github.com/postern/postern/internal/replica"
	"github.com/postern/postern/internal/sitestate"
	"github.com/postern/postern/internal/telemetry"
)

func fakeAccount(s *fakePOP3, id, name, target string) replica.POP3Account {
	h, p := s.hostPort()
	return replica.POP3Account{ID: id, Name: name, Host: h, Port: p, TLS: replica.TLSNone, AllowInsecure: true,
		Auth: replica.AuthUser, Username: s.user, Password: s.pass, Mode: replica.ModeSingle, TargetUser: target,
		Keep: replica.KeepPolicy{Policy: replica.KeepDelete}, Enabled: true}
}

// fakeSetup is a site with user alice and one account on a fake server
// holding n messages uid-1..uid-n.
func fakeSetup(t *testing.T, n int) (*env, *fakePOP3, replica.POP3Account, map[string][]byte) {
	e := newEnv(t)
	e.user("u-alice", "alice", "alice@example.com")
	s := newFakePOP3(t, "org@isp.test", "secret")
	want := map[string][]byte{}
	for i := 1; i <= n; i++ {
		m := genMessage(uint64(i), 3000*i, "")
		uid := fmt.Sprintf("uid-%d", i)
		s.add(uid, m)
		want[uid] = m
	}
	a := fakeAccount(s, "a-fake", "fake", "u-alice")
	e.account(a)
	return e, s, a, want
}

func wantKind(t *testing.T, err error, kind string) {
	t.Helper()
	if err == nil {
		t.Fatalf("session succeeded, want a %s failure", kind)
	}
	var ae *AccountError
	if !errors.As(err, &ae) || ae.Kind != kind {
		t.Fatalf("error %v (kind %q), want kind %s", err, ErrorKind(err), kind)
	}
}

// TestDroppedMidRETR: the connection drops in the middle of a message. The
// messages before it are published and recorded, that one and the rest
// come at the next session, once each and whole.
func TestDroppedMidRETR(t *testing.T) {
	e, s, a, want := fakeSetup(t, 3)
	s.handle = func(fc *fakeConn, session int, cmd string, args []string) bool {
		if session == 1 && cmd == "RETR" && args[0] == "2" {
			fc.send("+OK message follows")
			fc.sendRaw(dotStuff(want["uid-2"])[:2000])
			fc.Close()
			return true
		}
		return false
	}
	dl := e.downloader(testConfig(), nil)
	res, err := dl.Session(t.Context(), &a)
	wantKind(t, err, KindConnection)
	if res.Downloaded != 1 {
		t.Errorf("first session downloaded %d, want 1", res.Downloaded)
	}
	if _, err := e.store.Ledger().Get(t.Context(), a.ID, "uid-2"); !errors.Is(err, sitestate.ErrNotFound) {
		t.Errorf("uid-2 in the ledger after a broken RETR: %v", err)
	}
	res, err = dl.Session(t.Context(), &a)
	mustNoErr(t, "second session", err)
	if res.Downloaded != 2 {
		t.Errorf("second session downloaded %d, want 2", res.Downloaded)
	}
	checkSame(t, e.exactly(3), want)
	// The message that failed was tried last.
	var retrs []string
	for _, c := range s.received() {
		if strings.HasPrefix(c, "RETR") {
			retrs = append(retrs, c)
		}
	}
	if !slices.Equal(retrs, []string{"RETR 1", "RETR 2", "RETR 3", "RETR 2"}) {
		t.Errorf("RETR order %q", retrs)
	}
}

// TestNoUIDL: a server that refuses UIDL, or does not know it, is an
// error for the account and nothing is downloaded from it.
func TestNoUIDL(t *testing.T) {
	for _, tc := range []struct {
		name  string
		caps  []string
		reply string
	}{
		{"-ERR on UIDL", []string{"USER", "UIDL"}, "-ERR [SYS/PERM] UIDL is broken"},
		{"no UIDL at all", []string{"USER"}, "-ERR unknown command"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e, s, a, _ := fakeSetup(t, 2)
			s.caps = tc.caps
			s.handle = func(fc *fakeConn, _ int, cmd string, _ []string) bool {
				if cmd == "UIDL" {
					fc.send(tc.reply)
					return true
				}
				return false
			}
			dl := e.downloader(testConfig(), nil)
			res, err := dl.Session(t.Context(), &a)
			wantKind(t, err, KindUIDL)
			if !strings.Contains(err.Error(), "UIDL") || res.Downloaded != 0 {
				t.Errorf("error %q, downloaded %d", err, res.Downloaded)
			}
			for _, c := range s.received() {
				if strings.HasPrefix(c, "RETR") || strings.HasPrefix(c, "DELE") {
					t.Errorf("sent %q to a server without UIDL", c)
				}
			}
			e.exactly(0)
		})
	}
}

// TestSlowServer: a server that stops sending in the middle of a message
// hits the command deadline; the next session gets the message.
func TestSlowServer(t *testing.T) {
	e, s, a, want := fakeSetup(t, 2)
	s.handle = func(fc *fakeConn, session int, cmd string, args []string) bool {
		if session == 1 && cmd == "RETR" && args[0] == "1" {
			fc.send("+OK message follows")
			fc.sendRaw(dotStuff(want["uid-1"])[:1000])
			io.Copy(io.Discard, fc.r) // hang until the client gives up
			return true
		}
		return false
	}
	cfg := testConfig()
	cfg.CommandTimeout = 300 * time.Millisecond
	dl := e.downloader(cfg, nil)
	_, err := dl.Session(t.Context(), &a)
	wantKind(t, err, KindTimeout)
	_, err = dl.Session(t.Context(), &a)
	mustNoErr(t, "second session", err)
	checkSame(t, e.exactly(2), want)

	t.Run("whole session too long", func(t *testing.T) {
		e, s, a, _ := fakeSetup(t, 1)
		s.handle = func(fc *fakeConn, _ int, cmd string, _ []string) bool {
			if cmd == "RETR" {
				fc.send("+OK message follows")
				for i := 0; i < 200; i++ { // a trickle that never trips the command deadline
					fc.w.WriteString("line " + strings.Repeat("x", 20) + "\r\n")
					if fc.w.Flush() != nil {
						return true // the client hung up
					}
					time.Sleep(20 * time.Millisecond)
				}
				fc.send(".")
				return true
			}
			return false
		}
		cfg := testConfig()
		cfg.SessionTimeout = 500 * time.Millisecond
		dl := e.downloader(cfg, nil)
		_, err := dl.Session(t.Context(), &a)
		wantKind(t, err, KindTimeout)
		e.exactly(0)
	})
}

// TestKilledBetweenPublishAndLedger: the fetcher dies after mail.inbound
// acknowledged a message and before the ledger recorded it. A new
// downloader on the same state publishes it again with the same id (which
// downstream idempotency drops), records it, and never again.
func TestKilledBetweenPublishAndLedger(t *testing.T) {
	e, _, a, want := fakeSetup(t, 3)
	cfg := testConfig()
	cfg.BatchMessages = 1 // so that uid-3 is not in the batch the kill interrupts
	dl1 := e.downloader(cfg, nil)
	dl1.afterPublish = func(_ context.Context, _, uidl string) error {
		if uidl == "uid-2" {
			return errors.New("killed")
		}
		return nil
	}
	_, err := dl1.Session(t.Context(), &a)
	if err == nil || !strings.Contains(err.Error(), "killed") {
		t.Fatalf("first session: %v", err)
	}
	if _, err := e.store.Ledger().Get(t.Context(), a.ID, "uid-2"); !errors.Is(err, sitestate.ErrNotFound) {
		t.Fatalf("uid-2 recorded although the fetcher was killed first: %v", err)
	}
	dl2 := e.downloader(testConfig(), nil)
	res, err := dl2.Session(t.Context(), &a)
	mustNoErr(t, "session after the restart", err)
	if res.Downloaded == 0 {
		t.Fatal("nothing downloaded after the restart")
	}
	_, err = dl2.Session(t.Context(), &a)
	mustNoErr(t, "third session", err)

	ins := e.exactly(4) // uid-1, uid-2 twice, uid-3
	ids := map[string][]string{}
	distinct := map[string][]byte{}
	for _, in := range ins {
		ids[in.Source.POP3UIDL] = append(ids[in.Source.POP3UIDL], in.ID)
		if prev, ok := distinct[in.ID]; ok && string(prev) != string(in.Message) {
			t.Errorf("id %s published with different bytes", in.ID)
		}
		distinct[in.ID] = in.Message
	}
	if len(ids["uid-2"]) != 2 {
		t.Errorf("uid-2 published as %q, want twice (the killed publish and the retry)", ids["uid-2"])
	}
	for uid, l := range ids {
		if len(l) > 1 && l[0] != l[1] {
			t.Errorf("%s published twice with different ids %q", uid, l)
		}
	}
	// Downstream dedup by id leaves each message once.
	var dedupd []events.Inbound
	for id, msg := range distinct {
		dedupd = append(dedupd, events.Inbound{ID: id, Message: msg, Source: events.Source{POP3UIDL: id}})
	}
	checkSame(t, dedupd, want)
	for uid := range want {
		if _, err := e.store.Ledger().Get(t.Context(), a.ID, uid); err != nil {
			t.Errorf("%s not in the ledger: %v", uid, err)
		}
	}
}

// TestKilledBetweenDeliveryAndDELE: every recipient was delivered, the
// fetcher sent DELE and died before QUIT, so the server kept the
// messages. The next session deletes them and downloads nothing again.
func TestKilledBetweenDeliveryAndDELE(t *testing.T) {
	e, s, a, want := fakeSetup(t, 2)
	dl := e.downloader(testConfig(), nil)
	_, err := dl.Session(t.Context(), &a)
	mustNoErr(t, "download", err)
	ins := e.inbound(2)
	runStatus(t, dl)
	e.deliverAll(ins, events.OutcomeDelivered)
	e.waitDelivered(a.ID, "uid-1", "uid-2")

	var killed atomic.Bool
	dl.beforeQuit = func(context.Context, string) error {
		if killed.CompareAndSwap(false, true) {
			return errors.New("killed before QUIT")
		}
		return nil
	}
	_, err = dl.Session(t.Context(), &a)
	if err == nil {
		t.Fatal("session killed before QUIT succeeded")
	}
	if got := s.uids(); len(got) != 2 {
		t.Fatalf("server holds %q after DELE without QUIT, want both", got)
	}
	res, err := dl.Session(t.Context(), &a)
	mustNoErr(t, "session after the restart", err)
	if res.Deleted != 2 || res.Downloaded != 0 || len(s.uids()) != 0 {
		t.Errorf("deleted %d, downloaded %d, server holds %q", res.Deleted, res.Downloaded, s.uids())
	}
	for _, u := range []string{"uid-1", "uid-2"} {
		le, err := e.store.Ledger().Get(t.Context(), a.ID, u)
		if err != nil || le.DeletedAt.IsZero() {
			t.Errorf("%s: %+v %v, want marked deleted", u, le, err)
		}
	}
	res, err = dl.Session(t.Context(), &a)
	mustNoErr(t, "last session", err)
	if res.Forgotten != 2 {
		t.Errorf("forgot %d entries, want 2", res.Forgotten)
	}
	checkSame(t, e.exactly(2), want)
}

// TestOversize: a message larger than the bus carries is left on the
// server and reported; the others go through.
func TestOversize(t *testing.T) {
	e, s, a, want := fakeSetup(t, 3) // 3000, 6000, 9000 bytes
	dl := e.downloader(testConfig(), func(o *Options) { o.MaxMessageBytes = 7000 })
	res, err := dl.Session(t.Context(), &a)
	mustNoErr(t, "session", err)
	if res.Downloaded != 2 || len(res.Problems) != 1 || ErrorKind(res.Problems[0]) != KindOversize {
		t.Fatalf("result %+v", res)
	}
	var ae *AccountError
	errors.As(res.Problems[0], &ae)
	if ae.UIDL != "uid-3" || !strings.Contains(ae.Error(), "7000") {
		t.Errorf("problem %v", ae)
	}
	delete(want, "uid-3")
	checkSame(t, e.exactly(2), want)
	if !slices.Contains(s.uids(), "uid-3") {
		t.Error("the oversize message left the server")
	}

	t.Run("LIST lies about the size", func(t *testing.T) {
		e, s, a, _ := fakeSetup(t, 1) // 3000 bytes
		s.handle = func(fc *fakeConn, _ int, cmd string, _ []string) bool {
			if cmd == "LIST" {
				fc.send("+OK", "1 100", ".")
				return true
			}
			return false
		}
		dl := e.downloader(testConfig(), func(o *Options) { o.MaxMessageBytes = 1000 })
		_, err := dl.Session(t.Context(), &a)
		wantKind(t, err, KindOversize)
		e.exactly(0)
	})
}

// TestDuplicateAcrossAccounts: one message (same Message-ID) in the
// mailboxes of two accounts for the same user is published once; the copy
// is recorded as done and deleted as the policy says; a third account that
// brings it to another user publishes it for that user.
func TestDuplicateAcrossAccounts(t *testing.T) {
	e := newEnv(t)
	e.user("u-alice", "alice", "alice@example.com")
	e.user("u-bob", "bob", "bob@example.com")
	shared := genMessage(7, 4000, "")
	s1 := newFakePOP3(t, "one@isp.test", "pw1")
	s2 := newFakePOP3(t, "two@isp.test", "pw2")
	s3 := newFakePOP3(t, "three@isp.test", "pw3")
	s1.add("x-1", shared)
	s1.add("x-2", genMessage(8, 4000, ""))
	s2.add("y-1", shared)
	s3.add("z-1", shared)
	a1 := fakeAccount(s1, "a-1", "one", "u-alice")
	a2 := fakeAccount(s2, "a-2", "two", "u-alice")
	a3 := fakeAccount(s3, "a-3", "three", "u-bob")
	for _, a := range []replica.POP3Account{a1, a2, a3} {
		e.account(a)
	}
	dl := e.downloader(testConfig(), nil)
	ctx := t.Context()
	dups := 0
	for i := 0; i < 3; i++ {
		res, err := dl.Cycle(ctx)
		mustNoErr(t, "cycle", err)
		for _, r := range res {
			dups += r.Duplicates
		}
	}
	if dups != 1 {
		t.Errorf("%d duplicates recorded, want 1", dups)
	}
	ins := e.exactly(3)
	perRcpt := map[string]int{}
	for _, in := range ins {
		if string(in.Message) == string(shared) {
			perRcpt[in.Recipients[0]]++
		}
	}
	if perRcpt["alice@example.com"] != 1 || perRcpt["bob@example.com"] != 1 {
		t.Errorf("the shared message reached %v, want alice and bob once each", perRcpt)
	}
	// The losing copy is done already: deleted from its server.
	if len(s1.uids())+len(s2.uids()) != 2 {
		t.Errorf("servers hold %q and %q, want the losing copy deleted", s1.uids(), s2.uids())
	}
}

// TestDedupClaims checks the crash-safe duplicate claim on a real SQLite
// state.
func TestDedupClaims(t *testing.T) {
	e := newEnv(t)
	ctx := t.Context()
	d := &dedup{idem: e.store.Idempotency(), window: time.Hour}
	check := func(acct, uidl, rcpt string, want verdict) {
		t.Helper()
		v, err := d.check(ctx, acct, uidl, "m@x", []string{rcpt})
		if err != nil || v[0] != want {
			t.Fatalf("check(%s, %s, %s) = %v, %v; want %v", acct, uidl, rcpt, v, err, want)
		}
	}
	// The winner keeps winning on retries (a failed publish, a crash).
	check("a1", "u1", "r", keep)
	check("a1", "u1", "r", keep)
	// Another source before the winner published: wait; after: drop, for good.
	check("a2", "u2", "r", pending)
	check("a2", "u2", "r", pending)
	mustNoErr(t, "published", d.published(ctx, "m@x", "r"))
	check("a2", "u2", "r", drop)
	check("a2", "u2", "r", drop)
	check("a3", "u3", "r", drop)
	// A winner that never publishes: once its claim expires, the waiting copy wins.
	check("b1", "u1", "s", keep)
	check("b2", "u2", "s", pending)
	mustNoErr(t, "expire", e.store.Idempotency().Forget(ctx, "fetch-dup:m@x:s"))
	check("b2", "u2", "s", keep)
	// Stopped between "tried" and the claim: keep (never a loss).
	_, err := e.store.Idempotency().Claim(ctx, "fetch-dup-try:"+srcHash("c1", "u1")+":m@x:t", time.Hour)
	mustNoErr(t, "claim", err)
	check("c1", "u1", "t", keep)
	check("c2", "u2", "t", pending)
	// One publish of several recipients releases the copies waiting for each.
	for _, r := range []string{"p1", "p2", "p3"} {
		check("d1", "u1", r, keep)
		check("d2", "u2", r, pending)
	}
	mustNoErr(t, "published", d.published(ctx, "m@x", "p1", "p3"))
	check("d2", "u2", "p1", drop)
	check("d2", "u2", "p2", pending)
	check("d2", "u2", "p3", drop)
	// No Message-ID, or a zero window: no suppression.
	if v, _ := d.check(ctx, "a9", "u9", "", []string{"r"}); v[0] != keep {
		t.Error("a message without Message-ID was suppressed")
	}
	// Two copies of one message for the same recipients: the first to
	// claim wins all of them, the other waits for all. (Run one after the
	// other here; claiming a message's keys in one ClaimAll is what keeps
	// it so when two sessions interleave, instead of each winning a part
	// and both waiting for the other.)
	x, err := d.check(ctx, "x1", "u1", "n@x", []string{"a", "b"})
	mustNoErr(t, "check x", err)
	y, err := d.check(ctx, "y1", "u1", "n@x", []string{"b", "a"})
	mustNoErr(t, "check y", err)
	if x[0] != keep || x[1] != keep || y[0] != pending || y[1] != pending {
		t.Errorf("copies split the claims: x %v, y %v; want x keeping both, y waiting for both", x, y)
	}
}

// TestStatusConsumer: final outcomes of POP3 messages are marked in the
// ledger, deferred ones and other sources are not, a status that
// overtakes the ledger write is applied once it is written, and a record
// that is not a status is refused.
func TestStatusConsumer(t *testing.T) {
	e := newEnv(t)
	dl := e.downloader(testConfig(), nil)
	ctx := t.Context()
	led := e.store.Ledger()
	_, _, err := led.RecordHandoff(ctx, "acc", "u1", sitestate.Handoff{Recipients: []string{"a@example.com", "b@example.com", "c@example.com"}})
	mustNoErr(t, "handoff", err)
	status := func(uidl, rcpt, outcome, kind string) msgbus.Record {
		st := events.Status{InboundID: "in-1", Stage: "relay", Recipient: rcpt, Outcome: outcome, At: time.Now(),
			Source: events.Source{Kind: kind, POP3Account: "acc", POP3UIDL: uidl}}
		if outcome == events.OutcomeDeferred {
			st.NextAttempt = time.Now().Add(time.Hour)
		}
		rec, err := st.Encode()
		mustNoErr(t, "encode", err)
		return msgbus.Record{Message: msgbus.NewMessage(events.TopicStatus, rec)}
	}
	for _, r := range []msgbus.Record{
		status("u1", "A@Example.com", events.OutcomeDelivered, events.SourcePOP3),
		status("u1", "b@example.com", events.OutcomeDeferred, events.SourcePOP3),
		status("u1", "b@example.com", events.OutcomeDelivered, events.SourceSMTP),
		status("u1", "c@example.com", events.OutcomeBounced, events.SourcePOP3),
		status("u2", "z@example.com", events.OutcomeRejected, events.SourcePOP3), // before its hand-off
	} {
		if _, err := dl.handleStatus(ctx, r); err != nil {
			t.Fatalf("handleStatus: %v", err)
		}
	}
	le, _ := led.Get(ctx, "acc", "u1")
	if got := le.Pending(); !slices.Equal(got, []string{"b@example.com"}) {
		t.Errorf("pending %q, want b only", got)
	}
	_, _, err = led.RecordHandoff(ctx, "acc", "u2", sitestate.Handoff{Recipients: []string{"z@example.com"}})
	mustNoErr(t, "handoff", err)
	mustNoErr(t, "orphans", dl.takeOrphans(ctx, "acc", "u2", []string{"z@example.com"}))
	if le, _ := led.Get(ctx, "acc", "u2"); !le.AllDelivered() {
		t.Errorf("early status not applied: %+v", le)
	}
	// The relay reports the mailbox an envelope recipient was expanded to:
	// an alias, a group member (nested), a shared mailbox's staff.
	e.put(replica.KindUser, "u-alice", []string{"alice", "alice@example.com", "a.alias@example.com"},
		replica.User{Username: "alice", PrimaryAddress: "alice@example.com", Aliases: []string{"a.alias@example.com"}, Enabled: true})
	e.user("u-bob", "bob", "bob@example.com")
	e.user("u-dave", "dave", "dave@example.com")
	e.put(replica.KindGroup, "g-inner", []string{"inner", "inner@example.com"}, replica.Group{Name: "inner", Address: "inner@example.com",
		Members: []replica.Member{{Type: replica.MemberUser, ID: "u-bob"}}})
	e.put(replica.KindGroup, "g-team", []string{"team", "team@example.com"}, replica.Group{Name: "team", Address: "team@example.com",
		Members: []replica.Member{{Type: replica.MemberUser, ID: "u-alice"}, {Type: replica.MemberGroup, ID: "g-inner"}}})
	e.put(replica.KindSharedMailbox, "sm-sales", []string{"sales@example.com"}, replica.SharedMailbox{Address: "sales@example.com",
		Manager: "u-alice", Staff: []string{"u-dave"}})
	_, _, err = led.RecordHandoff(ctx, "acc", "u3", sitestate.Handoff{Recipients: []string{"a.alias@example.com", "team@example.com", "sales@example.com", "inner@example.com", "x@example.com"}})
	mustNoErr(t, "handoff", err)
	for _, step := range []struct {
		final   string
		pending []string
	}{
		{"alice@example.com", []string{"inner@example.com", "x@example.com"}}, // alias, group member, shared mailbox manager
		{"dave@example.com", []string{"inner@example.com", "x@example.com"}},  // dave is in none of those left
		{"bob@example.com", []string{"x@example.com"}},                        // member of inner (and of team through it)
		{"nobody@other.net", []string{"x@example.com"}},
	} {
		if _, err := dl.handleStatus(ctx, status("u3", step.final, events.OutcomeDelivered, events.SourcePOP3)); err != nil {
			t.Fatal(err)
		}
		le, _ := led.Get(ctx, "acc", "u3")
		if got := le.Pending(); !slices.Equal(got, step.pending) {
			t.Errorf("after %s: pending %q, want %q", step.final, got, step.pending)
		}
	}

	// A status that names its envelope recipient (OriginalRecipient, as
	// the relay and router write it) marks that one, whatever the mailbox:
	// here a postmaster the replica cannot link to x@.
	st := events.Status{InboundID: "in-3", Stage: "relay", Recipient: "postmaster@example.com", OriginalRecipient: "X@example.com",
		Outcome: events.OutcomeDelivered, At: time.Now(), Source: events.Source{Kind: events.SourcePOP3, POP3Account: "acc", POP3UIDL: "u3"}}
	rec, err := st.Encode()
	mustNoErr(t, "encode", err)
	if _, err := dl.handleStatus(ctx, msgbus.Record{Message: msgbus.NewMessage(events.TopicStatus, rec)}); err != nil {
		t.Fatal(err)
	}
	if le, _ := led.Get(ctx, "acc", "u3"); !le.AllDelivered() {
		t.Errorf("original recipient not marked: pending %q", le.Pending())
	}

	// The router delivers to each mailbox once: a message published for
	// alice@ and team@ (which holds alice) gets one status, for alice@;
	// team@ is marked with it, or the message would never be deleted.
	_, _, err = led.RecordHandoff(ctx, "acc", "u4", sitestate.Handoff{Recipients: []string{"alice@example.com", "team@example.com", "a.alias@example.com"}})
	mustNoErr(t, "handoff", err)
	st = events.Status{InboundID: "in-4", Stage: "relay", Recipient: "alice@example.com", OriginalRecipient: "alice@example.com",
		Outcome: events.OutcomeDelivered, At: time.Now(), Source: events.Source{Kind: events.SourcePOP3, POP3Account: "acc", POP3UIDL: "u4"}}
	rec, err = st.Encode()
	mustNoErr(t, "encode", err)
	if _, err := dl.handleStatus(ctx, msgbus.Record{Message: msgbus.NewMessage(events.TopicStatus, rec)}); err != nil {
		t.Fatal(err)
	}
	if le, _ := led.Get(ctx, "acc", "u4"); !le.AllDelivered() {
		t.Errorf("recipients merged into alice's delivery not marked: pending %q", le.Pending())
	}

	bad := msgbus.Record{Message: msgbus.Message{Topic: events.TopicStatus, Value: []byte("{")}}
	if _, err := dl.handleStatus(ctx, bad); !msgbus.IsPermanent(err) {
		t.Errorf("garbage status: %v, want a permanent error", err)
	}
}

// TestAuthFailureBackoff: a refused login fails with kind auth, shows in
// the metrics, and the scheduler waits the long auth backoff; other
// failures wait the ordinary one (never less than the poll interval); an
// edit of the account clears it.
func TestAuthFailureBackoff(t *testing.T) {
	e, _, a, _ := fakeSetup(t, 1)
	a.Password = "wrong"
	e.account(a)
	tel, err := telemetry.Setup(t.Context(), telemetry.DefaultConfig(), telemetry.Resource{ServiceName: "fetcher", Site: "hq"})
	mustNoErr(t, "telemetry", err)
	t.Cleanup(func() { tel.Shutdown(context.Background()) })
	cfg := testConfig()
	cfg.Jitter = 0
	dl := e.downloader(cfg, func(o *Options) { o.MeterProvider = tel.MeterProvider() })
	_, err = dl.Session(t.Context(), &a)
	wantKind(t, err, KindAuth)

	now := time.Now()
	dl.opts.Now = func() time.Time { return now }
	states := map[string]*acctState{a.ID: {acct: &a, running: true}}
	dl.finished(states, sessionDone{id: a.ID, start: now, err: err})
	dl.finished(states, sessionDone{id: a.ID, start: now, err: err})
	if got, want := states[a.ID].next.Sub(now), 2*cfg.AuthBackoff.Initial; got != want {
		t.Errorf("after two refused logins: next in %s, want %s", got, want)
	}
	other := &AccountError{Kind: KindConnection, Err: errors.New("lost")}
	states[a.ID].authFails = 0
	dl.finished(states, sessionDone{id: a.ID, start: now, err: other})
	if got, want := states[a.ID].next.Sub(now), cfg.DefaultPollInterval; got != want {
		t.Errorf("after one lost connection: next in %s, want the poll interval %s", got, want)
	}
	for range 10 {
		dl.finished(states, sessionDone{id: a.ID, start: now, err: other})
	}
	if got := states[a.ID].next.Sub(now); got != cfg.Backoff.Max {
		t.Errorf("after many failures: next in %s, want the cap %s", got, cfg.Backoff.Max)
	}
	a.Version++
	e.account(a)
	dl.reconcile(t.Context(), states, now)
	if s := states[a.ID]; s.failures != 0 || s.next.After(now) {
		t.Errorf("after an edit: %+v, want due now without backoff", s)
	}

	rec := httptest.NewRecorder()
	tel.MetricsHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if body := rec.Body.String(); !strings.Contains(body, `postern_pop3_errors_total{account="fake",kind="auth"`) {
		t.Errorf("no auth error in the metrics:\n%s", grepLines(body, "postern_pop3"))
	}
}

// TestMetricNames checks the Prometheus names of the download metrics.
func TestMetricNames(t *testing.T) {
	e, _, a, _ := fakeSetup(t, 2)
	tel, err := telemetry.Setup(t.Context(), telemetry.DefaultConfig(), telemetry.Resource{ServiceName: "fetcher", Site: "hq"})
	mustNoErr(t, "telemetry", err)
	t.Cleanup(func() { tel.Shutdown(context.Background()) })
	dl := e.downloader(testConfig(), func(o *Options) { o.MeterProvider = tel.MeterProvider(); o.MaxMessageBytes = 5000 })
	_, err = dl.Session(t.Context(), &a)
	mustNoErr(t, "session", err)
	_, err = e.store.Ledger().MarkDelivered(t.Context(), a.ID, "uid-1", time.Time{}, "alice@example.com")
	mustNoErr(t, "mark", err)
	_, err = dl.Session(t.Context(), &a)
	mustNoErr(t, "session", err)
	rec := httptest.NewRecorder()
	tel.MetricsHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body := rec.Body.String()
	for _, want := range []string{
		`postern_pop3_messages_downloaded_total{account="fake"`,
		`postern_pop3_bytes_downloaded_total{account="fake"`,
		`postern_pop3_errors_total{account="fake",kind="oversize"`,
		`postern_pop3_last_success_timestamp_seconds{account="fake"`,
		`postern_pop3_deleted_total{account="fake"`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %s:\n%s", want, grepLines(body, "postern_pop3"))
		}
	}
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
