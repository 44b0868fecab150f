package e2e

// Two sites around one users service (issue 7, "Two sites"): each site is
// its own `postern serve` process (fetcher, router, relay) with its own
// embedded broker and topics, its own site state and its own Dovecot; the
// relays deliver to each other over SMTP with mutual TLS (certificates of
// one test CA, each named after its site; the endpoints are the sites'
// smtp_endpoint in the directory).

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/e2e/internal/harness"
	"github.com/postern/postern/internal/testenv"
)

const branchDomain = "branch.e2e.test"

// The people of the two sites. Hugo starts at hq and moves to branch.
var (
	hana  = harness.User{Username: "hana", Password: "hana-password-20", Address: "hana@" + domain, DisplayName: "Hana", InternetReceive: true}
	hedda = harness.User{Username: "hedda", Password: "hedda-password-21", Address: "hedda@" + domain, DisplayName: "Hedda", InternetReceive: true}
	hugo  = harness.User{Username: "hugo", Password: "hugo-password-22", Address: "hugo@" + domain, DisplayName: "Hugo", InternetReceive: true}
	bruno = harness.User{Username: "bruno", Password: "bruno-password-23", Address: "bruno@" + branchDomain, DisplayName: "Bruno", InternetReceive: true}
)

// waitNotInPasswd waits until the site's passwd-file (written by its relay
// from its directory replica) no longer names username: the site's replica
// no longer has the user at this site.
func waitNotInPasswd(t *testing.T, s *harness.Site, username string) {
	t.Helper()
	harness.Eventually(t, 60*time.Second, username+" gone from the replica of site "+s.SiteName, func() error {
		f, err := os.Open(s.PasswdFile)
		if err != nil {
			return err
		}
		defer f.Close()
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if name, _, ok := strings.Cut(sc.Text(), ":"); ok && name == username {
				return fmt.Errorf("%s is still in %s", username, s.PasswdFile)
			}
		}
		return sc.Err()
	}, s.Process)
}

// maildirIDs returns the Message-IDs in u's Maildir at a site, from the
// files (for a user who can no longer log in there).
func maildirIDs(t *testing.T, s *harness.Site, u harness.User) map[string]int {
	t.Helper()
	msgs, err := s.MaildirMessages(u.Username)
	if err != nil {
		t.Fatalf("the Maildir of %s at %s: %v", u.Username, s.SiteName, err)
	}
	return harness.CountByMessageID(msgs)
}

// TestTwoSites: sites hq (hq.e2e.test) and branch (branch.e2e.test), one
// users service, one smarthost sink.
//
//   - Crossing over: Hana at hq writes to Bruno at branch and Bruno
//     answers: each message goes from one relay to the other (mutual TLS,
//     each site's certificate checked against the directory) and is read
//     over IMAP at the recipient's site, once, as submitted, with both
//     relays' Received fields; nothing reaches the smarthost or the
//     sender's site's mailboxes.
//   - A move: Hugo, at hq, gets mail from Bruno at hq. He is moved to
//     branch in the users service; with neither process restarted, the
//     next messages for him (from Hana at hq, from Bruno at branch) land at
//     branch, where he now logs in; hq keeps only the first message and no
//     longer lets him log in.
//   - The users service stopped: both sites go on with their replicas:
//     Hana still authenticates for submission at hq and her mail to Hedda
//     is delivered there, her mail to Bruno still crosses over, and
//     Bruno's to Hugo is delivered at branch.
func TestTwoSites(t *testing.T) {
	t.Parallel()
	users := harness.StartUsers(t)
	sink := harness.StartSink(t)
	ca := harness.NewCA(t)
	users.CreateSite(t, "hq", domain)
	users.CreateSite(t, "branch", branchDomain)
	ids := map[string]string{}
	for _, u := range []harness.User{hana, hedda, hugo} {
		ids[u.Username] = users.CreateUser(t, "hq", u)
	}
	ids[bruno.Username] = users.CreateUser(t, "branch", bruno)

	cfg := map[string]any{
		// A site whose replica does not have the other's endpoint yet
		// defers the message: retry soon.
		"relay.delivery.retry.base":         "300ms",
		"relay.delivery.retry.cap":          "1s",
		"relay.delivery.retry.jitter":       0,
		"relay.delivery.retry.max_lifetime": "1h",
	}
	start := time.Now()
	hq := &pipeline{users: users, sink: sink, site: harness.StartSite(t, harness.SiteOptions{Name: "hq", Users: users, Smarthost: sink.Addr, CA: ca, Config: cfg})}
	br := &pipeline{users: users, sink: sink, site: harness.StartSite(t, harness.SiteOptions{Name: "branch", Users: users, Smarthost: sink.Addr, CA: ca, Config: cfg})}
	procs := []*harness.Process{hq.site.Process, br.site.Process}
	users.SetSiteEndpoint(t, "hq", hq.site.Addr("intersite"))
	users.SetSiteEndpoint(t, "branch", br.site.Addr("intersite"))
	hq.site.WaitForUsers(t, hana.Username, hedda.Username, hugo.Username)
	br.site.WaitForUsers(t, bruno.Username)
	t.Logf("two sites up in %v", time.Since(start).Round(time.Millisecond))

	submit := func(p *pipeline, from harness.User, to harness.User, id string) []byte {
		t.Helper()
		msg := harness.NewMessage(from.DisplayName+" <"+from.Address+">", to.DisplayName+" <"+to.Address+">", "from "+from.Username+" at "+p.site.SiteName, id, "Hello "+to.DisplayName+".")
		if err := p.site.Submit(t, from.Username, from.Password, from.Address, []string{to.Address}, msg); err != nil {
			t.Fatalf("%s's submission at %s: %v", from.Username, p.site.SiteName, err)
		}
		return msg
	}
	// crossed checks a message that went from one site's relay to the
	// other's: the submitted bytes after the receiving relay's
	// Return-Path, Delivered-To and inter-site Received field (ESMTPS:
	// TLS, no AUTH) and the sending relay's submission Received field.
	crossed := func(who string, got, msg []byte, from, to harness.User) {
		t.Helper()
		if !bytes.HasSuffix(got, msg) {
			t.Errorf("%s: the submitted message is not the end of the one read:\n%q", who, got)
			return
		}
		head := string(got[:len(got)-len(msg)])
		want := "Return-Path: <" + from.Address + ">\r\nDelivered-To: " + to.Address + "\r\nReceived: from "
		if !strings.HasPrefix(head, want) || strings.Count(head, "Received: ") != 2 ||
			!strings.Contains(head, ") with ESMTPS id ") || !strings.Contains(head, ") with ESMTPSA id ") ||
			strings.Count(head, "Delivered-To: ") != 1 {
			t.Errorf("%s: the header added on the way is\n%s\nwant %q, an inter-site (ESMTPS) and a submission (ESMTPSA) Received field", who, head, want)
		}
	}

	t.Run("crossing over", func(t *testing.T) {
		const toBranch, toHQ = "<sites-hana-bruno@e2e.test>", "<sites-bruno-hana@e2e.test>"
		sent := time.Now()
		m1 := submit(hq, hana, bruno, toBranch)
		got := br.waitIMAP(t, bruno, 1)[0]
		t.Logf("hq to branch in %v", time.Since(sent).Round(time.Millisecond))
		crossed("bruno at branch", got, m1, hana, bruno)

		sent = time.Now()
		m2 := submit(br, bruno, hana, toHQ)
		got = hq.waitIMAP(t, hana, 1)[0]
		t.Logf("branch to hq in %v", time.Since(sent).Round(time.Millisecond))
		crossed("hana at hq", got, m2, bruno, hana)

		for _, c := range []struct {
			s *harness.Site
			u harness.User
		}{{hq.site, bruno}, {br.site, hana}} {
			if files, _ := c.s.MaildirFiles(c.u.Username); len(files) != 0 {
				t.Errorf("site %s has a Maildir for %s, whose home is the other site, with %d message(s)", c.s.SiteName, c.u.Username, len(files))
			}
		}
	})

	t.Run("a move", func(t *testing.T) {
		const before, afterHQ, afterBranch = "<sites-move-0@e2e.test>", "<sites-move-1@e2e.test>", "<sites-move-2@e2e.test>"
		submit(br, bruno, hugo, before)
		hq.mailboxHolds(t, hugo, before)

		moved := users.MoveUser(t, ids[hugo.Username], "branch")
		if moved.Site != "branch" {
			t.Fatalf("after the move, hugo's site is %q", moved.Site)
		}
		movedAt := time.Now()
		br.site.WaitForUsers(t, hugo.Username)
		waitNotInPasswd(t, hq.site, hugo.Username)
		t.Logf("the move seen by both sites in %v", time.Since(movedAt).Round(time.Millisecond))

		submit(hq, hana, hugo, afterHQ)
		submit(br, bruno, hugo, afterBranch)
		br.mailboxHolds(t, hugo, afterHQ, afterBranch)
		t.Logf("both messages at hugo's new site %v after the move", time.Since(movedAt).Round(time.Millisecond))
		harness.Quiesce(t, 20*time.Second, 2*time.Second, "deliveries settling", func() (string, error) {
			a, err := hq.site.MaildirFiles(hugo.Username)
			b, err2 := br.site.MaildirFiles(hugo.Username)
			return fmt.Sprint(len(a), len(b)), errors.Join(err, err2)
		}, procs...)
		br.mailboxHolds(t, hugo, afterHQ, afterBranch)
		if n := maildirIDs(t, hq.site, hugo); len(n) != 1 || n[before] != 1 {
			t.Errorf("hugo's Maildir at hq holds %v, want only %s (from before the move)", n, before)
		}
		if _, err := hq.site.Dovecot.IMAPMessages(hugo.Username, hugo.Password); !errors.Is(err, testenv.ErrLoginRefused) {
			t.Errorf("IMAP at hq as hugo after his move: %v, want the login refused", err)
		}
		for _, p := range procs {
			p.CheckRunning()
		}
	})

	t.Run("users service down", func(t *testing.T) {
		users.Kill()
		stopped := time.Now()
		// Each fetcher notices at once (its long poll is cut) and says it
		// goes on with its replica.
		for _, p := range procs {
			harness.Eventually(t, 30*time.Second, p.Name+" noticing the users service is gone", func() error {
				if !strings.Contains(p.Log(), `"msg":"directory sync failed`) {
					return errors.New("no failed sync logged yet")
				}
				return nil
			}, procs...)
		}
		const local, cross, atBranch = "<sites-down-local@e2e.test>", "<sites-down-cross@e2e.test>", "<sites-down-branch@e2e.test>"
		submit(hq, hana, hedda, local)
		submit(hq, hana, bruno, cross)
		submit(br, bruno, hugo, atBranch)
		hq.mailboxHolds(t, hedda, local)
		br.mailboxHolds(t, bruno, "<sites-hana-bruno@e2e.test>", cross)
		br.mailboxHolds(t, hugo, "<sites-move-1@e2e.test>", "<sites-move-2@e2e.test>", atBranch)
		t.Logf("delivered at both sites %v after the users service stopped", time.Since(stopped).Round(time.Millisecond))
		for _, p := range procs {
			p.CheckRunning()
		}
	})

	if n := len(sink.Accepted()); n != 0 {
		t.Errorf("the smarthost got %d message(s), want none: all of this mail stays in the organisation", n)
	}
}
