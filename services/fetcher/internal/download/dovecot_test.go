package download

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"slices"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/postern/postern/api/events"
	"github.com/postern/postern/internal/replica"
	"github.com/postern/postern/internal/testenv"
)

func startDovecot(t *testing.T, users ...testenv.DovecotUser) *testenv.DovecotServer {
	t.Helper()
	var d *testenv.DovecotServer
	t.Cleanup(func() {
		if t.Failed() && d != nil {
			t.Logf("--- dovecot log ---\n%s", d.Log())
		}
	})
	d = testenv.StartDovecot(t, testenv.DovecotOptions{Users: users, TLS: true, MailDir: memMailDir(t)})
	// Dovecot 2.3 stopped right after a session's QUIT sometimes outlives
	// testenv's shutdown limit (see pop3/dovecot_test.go); a short pause
	// before the SIGTERM avoids it. Not a timing claim.
	t.Cleanup(func() { time.Sleep(300 * time.Millisecond) })
	return d
}

// memMailDir returns a fresh directory in /dev/shm for the mailboxes, or ""
// (testenv's default) without one: Dovecot fsyncs at QUIT, and on a busy
// disk the 20 MiB message made that slow.
func memMailDir(t *testing.T) string {
	dir, err := os.MkdirTemp("/dev/shm", "postern-download-")
	if err != nil {
		return ""
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

func hostPort(t *testing.T, addr string) (string, int) {
	h, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	n, _ := strconv.Atoi(p)
	return h, n
}

func fingerprint(t *testing.T, certPEM []byte) string {
	block, _ := pem.Decode(certPEM)
	if block == nil {
		t.Fatal("no PEM block")
	}
	if _, err := x509.ParseCertificate(block.Bytes); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(block.Bytes)
	return hex.EncodeToString(sum[:])
}

// mailCount counts the messages in a user's Maildir (new/ and cur/).
func mailCount(t *testing.T, d *testenv.DovecotServer, user string) int {
	n := 0
	for _, sub := range []string{"new", "cur"} {
		es, err := os.ReadDir(d.UserMaildir(user) + "/" + sub)
		if err != nil && !os.IsNotExist(err) {
			t.Fatal(err)
		}
		n += len(es)
	}
	return n
}

func deliver(t *testing.T, d *testenv.DovecotServer, user string, msgs ...[]byte) {
	for _, m := range msgs {
		d.DeliverToMaildir(t, user, m)
		time.Sleep(2 * time.Millisecond) // distinct delivery times keep the order
	}
}

// TestDovecotSingleDrop downloads three single-drop accounts of a real
// Dovecot, one per TLS mode (plaintext, STARTTLS with a pinned certificate,
// implicit TLS), mailboxes of mixed sizes with a 20 MiB message and lines
// starting with dots: every message reaches mail.inbound byte for byte,
// once, for the target user, and is recorded in the ledger. mail.status
// "delivered" then makes the next session delete them from the Maildir, and
// the session after forgets their ledger entries.
func TestDovecotSingleDrop(t *testing.T) {
	plainU := testenv.DovecotUser{Username: "plain@isp.test", Password: "plain-pw"}
	stlsU := testenv.DovecotUser{Username: "stls@isp.test", Password: "stls pw ü"}
	tlsU := testenv.DovecotUser{Username: "tls@isp.test", Password: "tls-pw"}
	d := startDovecot(t, plainU, stlsU, tlsU)
	e := newEnv(t)
	e.user("u-alice", "alice", "alice@example.com")

	want := map[string][]byte{}
	add := func(user string, sizes ...int) {
		for _, size := range sizes {
			seed := uint64(len(want) + 1)
			m := genMessage(seed, size, "")
			want[fmt.Sprintf("%s#%d", user, seed)] = m
			deliver(t, d, user, m)
		}
	}
	big := 20 << 20
	if raceDetector {
		// Under the race detector the test consumer reading a 20 MiB
		// record back from the embedded broker is slow enough to miss
		// its group session now and then; the race run is about the
		// downloader's goroutines, not the size.
		big = 2 << 20
	}
	add(tlsU.Username, 300, 4<<10, 40<<10, 400<<10, big, 1<<10)
	add(stlsU.Username, 500, 4<<10, 40<<10)
	add(plainU.Username, 700, 10<<10)

	h, p := hostPort(t, d.POP3Addr)
	_, ps := hostPort(t, d.POP3SAddr)
	accts := []replica.POP3Account{
		{ID: "a-plain", Name: "plain", Host: h, Port: p, TLS: replica.TLSNone, AllowInsecure: true, Username: plainU.Username, Password: plainU.Password},
		{ID: "a-stls", Name: "stls", Host: h, Port: p, TLS: replica.TLSStartTLS, TLSFingerprint: fingerprint(t, d.CertPEM), Username: stlsU.Username, Password: stlsU.Password},
		{ID: "a-tls", Name: "tls", Host: "127.0.0.1", Port: ps, TLS: replica.TLSImplicit, Username: tlsU.Username, Password: tlsU.Password},
	}
	for _, a := range accts {
		a.Auth, a.Mode, a.TargetUser, a.Enabled = replica.AuthUser, replica.ModeSingle, "u-alice", true
		a.Keep = replica.KeepPolicy{Policy: replica.KeepDelete}
		e.account(a)
	}
	dl := e.downloader(testConfig(), func(o *Options) { o.TLSConfig = d.TLSConfig() })
	ctx := t.Context()

	res, err := dl.Cycle(ctx)
	mustNoErr(t, "first cycle", err)
	total := 0
	for _, r := range res {
		total += r.Downloaded
		if len(r.Problems) > 0 {
			t.Errorf("%s: problems %v", r.Account, r.Problems)
		}
	}
	if total != len(want) {
		t.Errorf("downloaded %d, want %d (%+v)", total, len(want), res)
	}
	ins := e.inbound(len(want))
	checkSame(t, ins, want)
	for _, in := range ins {
		if !slices.Equal(in.Recipients, []string{"alice@example.com"}) || in.MailFrom != "sender@example.net" || in.Site != "hq" {
			t.Errorf("%s: envelope %q -> %q at %q", in.ID, in.MailFrom, in.Recipients, in.Site)
		}
		le, err := e.store.Ledger().Get(ctx, in.Source.POP3Account, in.Source.POP3UIDL)
		if err != nil {
			t.Fatalf("ledger entry of %s: %v", in.ID, err)
		}
		if !slices.Equal(le.Recipients, in.Recipients) || le.MessageID == "" || le.AllDelivered() {
			t.Errorf("ledger entry %+v", le)
		}
		if in.ID != InboundID(in.Source.POP3Account, in.Source.POP3UIDL, le.MessageID) {
			t.Errorf("id %s is not the deterministic one", in.ID)
		}
	}

	// The ledger stops a second download.
	res, err = dl.Cycle(ctx)
	mustNoErr(t, "second cycle", err)
	for _, r := range res {
		if r.Downloaded != 0 || r.Deleted != 0 {
			t.Errorf("second cycle %s: %+v", r.Account, r)
		}
	}

	// Delivered: the next session deletes them from the server.
	runStatus(t, dl)
	e.deliverAll(ins, events.OutcomeDelivered)
	for _, in := range ins {
		e.waitDelivered(in.Source.POP3Account, in.Source.POP3UIDL)
	}
	res, err = dl.Cycle(ctx)
	mustNoErr(t, "third cycle", err)
	deleted := 0
	for _, r := range res {
		deleted += r.Deleted
	}
	if deleted != len(want) {
		t.Errorf("deleted %d, want %d: %+v", deleted, len(want), res)
	}
	for _, u := range []string{plainU.Username, stlsU.Username, tlsU.Username} {
		if n := mailCount(t, d, u); n != 0 {
			t.Errorf("%s: %d messages left in the Maildir", u, n)
		}
	}
	res, err = dl.Cycle(ctx)
	mustNoErr(t, "fourth cycle", err)
	forgotten := 0
	for _, r := range res {
		forgotten += r.Forgotten
	}
	if forgotten != len(want) {
		t.Errorf("forgot %d ledger entries, want %d", forgotten, len(want))
	}
	e.exactly(len(want)) // and nothing more was published
}

// TestDovecotMultiDrop downloads a catch-all mailbox: recipients from the
// envelope headers in order, only the organisation's domains, the
// postmaster when nobody can be found; an account with local_domains keeps
// only those.
func TestDovecotMultiDrop(t *testing.T) {
	all := testenv.DovecotUser{Username: "catchall@isp.test", Password: "pw-1"}
	hqOnly := testenv.DovecotUser{Username: "hq-only@isp.test", Password: "pw-2"}
	d := startDovecot(t, all, hqOnly)
	e := newEnv(t)
	e.user("u-pm", "pm", "postmaster@example.com")

	msgs := []struct {
		header string
		want   []string
	}{
		{"Delivered-To: catchall@isp.test\r\nX-Original-To: Alice@example.com\r\n", []string{"alice@example.com"}},
		{"Received: from mx.isp.test by pop.isp.test with ESMTP id 7 for <bob@example.com>; Tue, 3 Mar 2026 10:00:00 +0100\r\n", []string{"bob@example.com"}},
		{"Envelope-To: alice@example.com, carol@branch.example.org, x@other.net\r\n", []string{"alice@example.com", "carol@branch.example.org"}},
		{"To: bob@example.com\r\n", []string{"postmaster@example.com"}},
		{"Delivered-To: stranger@other.net\r\n", []string{"postmaster@example.com"}},
	}
	byMsgID := map[string][]string{}
	for i, m := range msgs {
		raw := genMessage(uint64(100+i), 2000, "Return-Path: <list@other.net>\r\n"+m.header)
		deliver(t, d, all.Username, raw)
		deliver(t, d, hqOnly.Username, raw)
		byMsgID[fmt.Sprintf("%d.2000@example.net", 100+i)] = m.want
	}
	h, p := hostPort(t, d.POP3Addr)
	base := replica.POP3Account{Host: h, Port: p, TLS: replica.TLSNone, AllowInsecure: true, Auth: replica.AuthUser,
		Mode: replica.ModeMulti, Postmaster: "u-pm", Enabled: true}
	a1 := base
	a1.ID, a1.Name, a1.Username, a1.Password = "a-all", "catchall", all.Username, all.Password
	a2 := base
	a2.ID, a2.Name, a2.Username, a2.Password = "a-hq", "hq-only", hqOnly.Username, hqOnly.Password
	a2.LocalDomains = []string{"Example.COM"}
	e.account(a1)
	e.account(a2)
	// Duplicate suppression is off here: both accounts carry the same
	// messages on purpose.
	cfg := testConfig()
	cfg.DuplicateWindow = 0
	dl := e.downloader(cfg, nil)
	_, err := dl.Cycle(t.Context())
	mustNoErr(t, "cycle", err)
	ins := e.exactly(2 * len(msgs))
	for _, in := range ins {
		le, err := e.store.Ledger().Get(t.Context(), in.Source.POP3Account, in.Source.POP3UIDL)
		mustNoErr(t, "ledger", err)
		want := byMsgID[le.MessageID]
		if in.Source.POP3Account == "a-hq" {
			want = slices.DeleteFunc(slices.Clone(want), func(a string) bool { return a == "carol@branch.example.org" })
		}
		if !slices.Equal(in.Recipients, want) {
			t.Errorf("%s via %s: recipients %q, want %q", le.MessageID, in.Source.POP3Account, in.Recipients, want)
		}
		if in.MailFrom != "list@other.net" {
			t.Errorf("mail from %q, want the Return-Path", in.MailFrom)
		}
	}
}

// TestDovecotKeepPolicies: "keep" never deletes, "keep_days" deletes a
// delivered message once it is old enough.
func TestDovecotKeepPolicies(t *testing.T) {
	keepU := testenv.DovecotUser{Username: "keep@isp.test", Password: "pw-keep"}
	daysU := testenv.DovecotUser{Username: "days@isp.test", Password: "pw-days"}
	d := startDovecot(t, keepU, daysU)
	e := newEnv(t)
	e.user("u-alice", "alice", "alice@example.com")
	deliver(t, d, keepU.Username, genMessage(1, 3000, ""), genMessage(2, 5000, ""))
	deliver(t, d, daysU.Username, genMessage(3, 3000, ""))
	h, p := hostPort(t, d.POP3Addr)
	for _, a := range []replica.POP3Account{
		{ID: "a-keep", Name: "keep", Username: keepU.Username, Password: keepU.Password, Keep: replica.KeepPolicy{Policy: replica.KeepForever}},
		{ID: "a-days", Name: "days", Username: daysU.Username, Password: daysU.Password, Keep: replica.KeepPolicy{Policy: replica.KeepDays, Days: 2}},
	} {
		a.Host, a.Port, a.TLS, a.AllowInsecure, a.Mode, a.TargetUser, a.Enabled = h, p, replica.TLSNone, true, replica.ModeSingle, "u-alice", true
		e.account(a)
	}
	var offset atomic.Int64
	dl := e.downloader(testConfig(), func(o *Options) {
		o.Now = func() time.Time { return time.Now().Add(time.Duration(offset.Load())) }
	})
	ctx := t.Context()
	_, err := dl.Cycle(ctx)
	mustNoErr(t, "cycle", err)
	ins := e.inbound(3)
	runStatus(t, dl)
	e.deliverAll(ins, events.OutcomeDelivered)
	for _, in := range ins {
		e.waitDelivered(in.Source.POP3Account, in.Source.POP3UIDL)
	}
	_, err = dl.Cycle(ctx)
	mustNoErr(t, "cycle after delivery", err)
	if k, n := mailCount(t, d, keepU.Username), mailCount(t, d, daysU.Username); k != 2 || n != 1 {
		t.Errorf("after delivery: keep has %d (want 2), keep_days %d (want 1, not old enough)", k, n)
	}
	offset.Store(int64(49 * time.Hour))
	_, err = dl.Cycle(ctx)
	mustNoErr(t, "cycle two days later", err)
	if k, n := mailCount(t, d, keepU.Username), mailCount(t, d, daysU.Username); k != 2 || n != 0 {
		t.Errorf("two days later: keep has %d (want 2), keep_days %d (want 0)", k, n)
	}
	e.exactly(3)
}

// TestReplicaEditNextCycle runs the scheduler: an edit the directory sync
// (BeforeCycle) brings — a new user, an account's target user changed, a
// new account — is in effect at the next cycle.
func TestReplicaEditNextCycle(t *testing.T) {
	isp1 := testenv.DovecotUser{Username: "isp1@isp.test", Password: "pw-1"}
	isp2 := testenv.DovecotUser{Username: "isp2@isp.test", Password: "pw-2"}
	d := startDovecot(t, isp1, isp2)
	e := newEnv(t)
	e.user("u-alice", "alice", "alice@example.com")
	h, p := hostPort(t, d.POP3Addr)
	acct := func(id, name string, u testenv.DovecotUser, target string) replica.POP3Account {
		return replica.POP3Account{ID: id, Name: name, Host: h, Port: p, TLS: replica.TLSNone, AllowInsecure: true,
			Username: u.Username, Password: u.Password, Mode: replica.ModeSingle, TargetUser: target, Enabled: true, PollIntervalSeconds: 1}
	}
	e.account(acct("a-1", "isp1", isp1, "u-alice"))

	edits := make(chan func(), 1)
	var cycles atomic.Int64
	cfg := testConfig()
	cfg.RescanInterval = 200 * time.Millisecond
	dl := e.downloader(cfg, func(o *Options) {
		o.BeforeCycle = func(ctx context.Context) error {
			cycles.Add(1)
			select {
			case edit := <-edits:
				edit() // the sync brings the change
			default:
			}
			return nil
		}
	})
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- dl.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})

	deliver(t, d, isp1.Username, genMessage(1, 1000, ""))
	first := e.inbound(1)
	if !slices.Equal(first[0].Recipients, []string{"alice@example.com"}) {
		t.Fatalf("before the edit: %q", first[0].Recipients)
	}
	edits <- func() {
		e.user("u-bob", "bob", "bob@example.com")
		e.account(acct("a-1", "isp1", isp1, "u-bob"))
		e.account(acct("a-2", "isp2", isp2, "u-alice"))
	}
	deliver(t, d, isp1.Username, genMessage(2, 1000, ""))
	deliver(t, d, isp2.Username, genMessage(3, 1000, ""))
	ins := e.inbound(3)
	got := map[string][]string{}
	for _, in := range ins[1:] {
		got[in.Source.POP3Account] = in.Recipients
	}
	if !slices.Equal(got["a-1"], []string{"bob@example.com"}) || !slices.Equal(got["a-2"], []string{"alice@example.com"}) {
		t.Errorf("after the edit: %q", got)
	}
	if cycles.Load() < 2 {
		t.Errorf("%d cycles ran BeforeCycle", cycles.Load())
	}
	// A removed account is no longer polled.
	e.remove(replica.KindPOP3Account, "a-2")
	deliver(t, d, isp2.Username, genMessage(4, 1000, ""))
	n := cycles.Load()
	for deadline := time.Now().Add(20 * time.Second); cycles.Load() < n+3; {
		if time.Now().After(deadline) {
			t.Fatalf("the scheduler ran %d cycles in 20s", cycles.Load()-n)
		}
		time.Sleep(50 * time.Millisecond) // Run polls a-1 every second
	}
	e.exactly(3)
}
