package e2e

// Single-box mode (issue 7, "Single box"): the four services in one
// `postern serve` process, as `make run` starts them, used the way the
// README's quick start tells a newcomer to: no token to create and paste,
// the site's mail domain set, users created, mail submitted and read over
// IMAP, a POP3 account downloaded; and the same after a restart.

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/api/usersclient"
	"github.com/postern/postern/e2e/internal/harness"
	"github.com/postern/postern/internal/testenv"
)

// TestSingleBox: a fresh single box creates its site and its fetcher's
// site_agent token itself. The administrator gives the site a domain and
// creates Alice and Bob; Alice submits one message for Bob, which stays
// local (Bob reads it over IMAP, the smarthost never sees it), and one for
// an outside address, which reaches the smarthost. A POP3 account for
// Alice's ISP mailbox brings her mail in. After a restart the box keeps
// its token (still one site_agent token in the directory), and a user
// created then can log in: the directory still syncs.
func TestSingleBox(t *testing.T) {
	t.Parallel()
	const boxDomain = "box.e2e.test"
	const ispBox = "main-alice@isp.example"
	sink := harness.StartSink(t)
	isp := harness.StartISP(t, testenv.DovecotUser{Username: ispBox, Password: "isp-password-alice"})
	site := harness.StartSite(t, harness.SiteOptions{Name: "main", SingleBox: true, Smarthost: sink.Addr, Config: harness.QuickFetcher()})
	p := &pipeline{users: site.Users, site: site, sink: sink}

	if out := site.Output(); !strings.Contains(out, "syncs site main") {
		t.Errorf("the start-up output does not say the directory syncs site main:\n%s", out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	got, err := p.users.Client.GetSiteWithResponse(ctx, "main", nil)
	cancel()
	if err != nil || got.JSON200 == nil {
		t.Fatalf("site main after the first start: %v %v", err, got)
	}
	if len(got.JSON200.Domains) != 0 {
		t.Errorf("the site the box made has domains %v, want none yet", got.JSON200.Domains)
	}
	p.users.SetSiteDomains(t, "main", boxDomain)
	ann := harness.User{Username: "ann", Password: "ann-password-31", Address: "ann@" + boxDomain, DisplayName: "Ann Leroy", InternetSend: true, InternetReceive: true}
	ben := harness.User{Username: "ben", Password: "ben-password-32", Address: "ben@" + boxDomain, DisplayName: "Ben Morel", InternetReceive: true}
	annID := p.users.CreateUser(t, "main", ann)
	p.users.CreateUser(t, "main", ben)
	site.WaitForUsers(t, ann.Username, ben.Username)

	// Submission: one message for a colleague, one for the outside.
	local := harness.NewMessage(ann.Address, ben.Address, "lunch?", "<box-local@box.e2e.test>", "Lunch at noon?")
	outside := harness.NewMessage(ann.Address, "client@outside.example", "offer", "<box-out@box.e2e.test>", "Our offer.")
	if err := site.Submit(t, ann.Username, ann.Password, ann.Address, []string{ben.Address}, local); err != nil {
		t.Fatalf("submitting for a colleague: %v", err)
	}
	if err := site.Submit(t, ann.Username, ann.Password, ann.Address, []string{"client@outside.example"}, outside); err != nil {
		t.Fatalf("submitting for the outside: %v", err)
	}
	msgs := p.waitIMAP(t, ben, 1)
	if id := harness.MessageID(msgs[0]); id != "<box-local@box.e2e.test>" {
		t.Errorf("ben's INBOX holds %s, want <box-local@box.e2e.test>", id)
	}
	harness.Eventually(t, 60*time.Second, "the outside message at the smarthost", func() error {
		if n := sink.CountByMessageID()["<box-out@box.e2e.test>"]; n != 1 {
			return fmt.Errorf("seen %d time(s)", n)
		}
		return nil
	}, site.Process)

	// A POP3 account for Ann's ISP mailbox.
	const sender = "customer@outside.example"
	m := ispMessage([]string{"Return-Path: <" + sender + ">", "Delivered-To: " + ispBox, ispReceived(ispBox)},
		"Customer <"+sender+">", "Ann <"+ispBox+">", "order", "<box-pop3@outside.example>")
	isp.Deliver(t, ispBox, m)
	acct := isp.Account(t, "isp-ann", "main", ispBox, usersclient.TLSModeTLS)
	mode := usersclient.POP3ModeSingle
	acct.Mode, acct.TargetUser = &mode, &annID
	p.users.CreatePOP3Account(t, acct)
	p.readExactly(t, ann, map[string][]byte{"<box-pop3@outside.example>": m}, sender)

	if counts := sink.CountByMessageID(); counts["<box-local@box.e2e.test>"] != 0 || len(counts) != 1 {
		t.Errorf("the smarthost got %v, want only <box-out@box.e2e.test>", counts)
	}

	// A restart keeps the token; the directory still syncs.
	site.Stop()
	site.Start()
	role := usersclient.TokenRoleSiteAgent
	ctx, cancel = context.WithTimeout(context.Background(), 30*time.Second)
	toks, err := p.users.Client.ListTokensWithResponse(ctx, &usersclient.ListTokensParams{Role: &role})
	cancel()
	if err != nil || toks.JSON200 == nil {
		t.Fatalf("listing site_agent tokens: %v %v", err, toks)
	}
	if n := len(toks.JSON200.Items); n != 1 {
		t.Errorf("%d site_agent tokens after a restart, want the one the first start made", n)
	}
	cid := harness.User{Username: "cid", Password: "cid-password-33", Address: "cid@" + boxDomain, InternetReceive: true}
	p.users.CreateUser(t, "main", cid)
	site.WaitForUsers(t, cid.Username)
	note := harness.NewMessage(ben.Address, cid.Address, "welcome", "<box-welcome@box.e2e.test>", "Welcome, Cid.")
	if err := site.Submit(t, ben.Username, ben.Password, ben.Address, []string{cid.Address}, note); err != nil {
		t.Fatalf("submitting after the restart: %v", err)
	}
	if id := harness.MessageID(p.waitIMAP(t, cid, 1)[0]); id != "<box-welcome@box.e2e.test>" {
		t.Errorf("cid's INBOX holds %s, want <box-welcome@box.e2e.test>", id)
	}
}
