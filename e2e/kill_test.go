package e2e

// The relay killed (SIGKILL, the whole `postern serve` process with its
// embedded broker) while it delivers and while it waits to retry: no
// accepted message is lost, none is doubled in a mailbox, and the
// smarthost gets each outbound message once — but for the window the
// relay documents between the smarthost's 250 and the relay storing that
// it was sent, which the test measures and reports.

import (
	"fmt"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/postern/postern/e2e/internal/harness"
)

// Local colleagues who receive the kill tests' mail (bob is one of them).
var colleagues = []harness.User{
	bob,
	{Username: "chloe", Password: "chloe-password-3", Address: "chloe@" + domain, InternetReceive: true},
	{Username: "dimitri", Password: "dimitri-password-4", Address: "dimitri@" + domain, InternetReceive: true},
	{Username: "emma", Password: "emma-password-5", Address: "emma@" + domain, InternetReceive: true},
}

// job is one message to inject.
type job struct {
	id      string // Message-ID
	inbound bool   // through the inbound listener from outside; else submitted by alice
	from    string
	rcpt    string
	msg     []byte
}

// inject sends every job with workers parallel sessions (a submission
// session as alice and an inbound session per worker) and fails the test
// unless each one was answered 250.
func inject(t *testing.T, site *harness.Site, workers int, jobs []job) {
	t.Helper()
	ch := make(chan job)
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []string
	)
	fail := func(format string, args ...any) {
		mu.Lock()
		errs = append(errs, fmt.Sprintf(format, args...))
		mu.Unlock()
	}
	for range workers {
		wg.Go(func() {
			var sub, in *harness.SMTPClient
			defer func() {
				for _, c := range []*harness.SMTPClient{sub, in} {
					if c != nil {
						_ = c.Close()
					}
				}
			}()
			for j := range ch {
				var err error
				c := &sub
				if j.inbound {
					c = &in
				}
				if *c == nil {
					if j.inbound {
						*c, err = site.DialInbound(t)
					} else {
						*c, err = site.DialSubmission(t, alice.Username, alice.Password)
					}
					if err != nil {
						fail("%s: connecting: %v", j.id, err)
						continue
					}
				}
				if err := (*c).Send(j.from, []string{j.rcpt}, j.msg); err != nil {
					fail("%s: %v", j.id, err)
					_ = (*c).Close()
					*c = nil
				}
			}
		})
	}
	for _, j := range jobs {
		ch <- j
	}
	close(ch)
	wg.Wait()
	if len(errs) > 0 {
		t.Fatalf("%d of %d messages were not accepted:\n%s", len(errs), len(jobs), strings.Join(errs, "\n"))
	}
}

// mailboxIDs reads the Maildir files of the colleagues and counts each
// "username Message-ID".
func mailboxIDs(site *harness.Site, users []harness.User) (map[string]int, error) {
	n := map[string]int{}
	for _, u := range users {
		msgs, err := site.MaildirMessages(u.Username)
		if err != nil {
			return nil, err
		}
		for id, c := range harness.CountByMessageID(msgs) {
			n[u.Username+" "+id] += c
		}
	}
	return n, nil
}

// mailboxFiles counts the message files in the colleagues' Maildirs.
func mailboxFiles(site *harness.Site, users []harness.User) int {
	n := 0
	for _, u := range users {
		files, _ := site.MaildirFiles(u.Username)
		n += len(files)
	}
	return n
}

// TestKillDuringDelivery: 300 messages are accepted over SMTP (100
// submitted by alice for colleagues, 100 from outside for colleagues, 100
// submitted by alice for outside addresses, which go to the smarthost) by a
// pipeline without its router, which is then killed; the full pipeline is
// started on the same data and killed twice while it delivers (at about
// 10% and 50%), then started once more. In the end every colleague's
// mailbox holds each of their messages exactly once (read over IMAP), and
// the smarthost has every outbound message — twice at most for the
// messages caught between the smarthost's 250 and the relay recording it,
// which can be no more than the smarthost sessions open at each kill.
func TestKillDuringDelivery(t *testing.T) {
	t.Parallel()
	const (
		perKind     = 100
		maxSessions = 4 // relay.delivery.smarthost.max_sessions
	)
	people := append([]harness.User{alice}, colleagues...)
	p := startPipeline(t, harness.SiteOptions{
		// First only SMTP in: every message is accepted before delivery starts.
		Services: []string{"fetcher", "relay"},
		Config: map[string]any{
			"relay.delivery.smarthost.max_sessions": maxSessions,
			"relay.delivery.retry.base":             "500ms",
			// A send cut by SIGKILL leaves its lease ("sending:" key) for
			// dial + 4·command + data timeouts: keep that short here.
			"relay.delivery.dial_timeout":       "2s",
			"relay.delivery.command_timeout":    "2s",
			"relay.delivery.data_timeout":       "4s",
			"relay.delivery.retry.cap":          "2s",
			"relay.delivery.retry.max_lifetime": "1h",
		},
	}, people...)
	// A smarthost that takes its time, so that the kills find messages on
	// their way to it.
	p.sink.SetDelay(10 * time.Millisecond)

	var jobs []job
	wantLocal := map[string]int{}
	wantOut := map[string]bool{}
	for i := range perKind {
		c := colleagues[i%len(colleagues)]
		id := fmt.Sprintf("<kill-sub-%03d@e2e.test>", i)
		jobs = append(jobs, job{id: id, from: alice.Address, rcpt: c.Address, msg: harness.NewMessage(alice.Address, c.Address, "from alice "+id, id, "Hello colleague.")})
		wantLocal[c.Username+" "+id] = 1

		c = colleagues[(i+1)%len(colleagues)]
		id = fmt.Sprintf("<kill-in-%03d@e2e.test>", i)
		from := fmt.Sprintf("customer%d@outside.example", i%7)
		jobs = append(jobs, job{id: id, inbound: true, from: from, rcpt: c.Address, msg: harness.NewMessage(from, c.Address, "from outside "+id, id, "Hello from outside.")})
		wantLocal[c.Username+" "+id] = 1

		id = fmt.Sprintf("<kill-out-%03d@e2e.test>", i)
		to := fmt.Sprintf("partner%d@outside.example", i%13)
		jobs = append(jobs, job{id: id, from: alice.Address, rcpt: to, msg: harness.NewMessage(alice.Address, to, "to outside "+id, id, "Hello partner.")})
		wantOut[id] = true
	}
	total := len(wantLocal) + len(wantOut)
	start := time.Now()
	inject(t, p.site, 4, jobs)
	t.Logf("%d messages accepted in %v", len(jobs), time.Since(start).Round(time.Millisecond))
	p.site.Kill()

	// The full pipeline, killed twice while it delivers.
	p.site.Set("services", []string{"fetcher", "router", "relay"})
	delivered := func() int { return mailboxFiles(p.site, colleagues) + len(p.sink.Accepted()) }
	for _, at := range []int{total / 10, total / 2} {
		p.site.Start()
		harness.Eventually(t, 90*time.Second, fmt.Sprintf("%d deliveries before the kill", at), func() error {
			if n := delivered(); n < at {
				return fmt.Errorf("%d so far", n)
			}
			return nil
		}, p.site.Process)
		p.site.Kill()
		local, out := mailboxFiles(p.site, colleagues), len(p.sink.Accepted())
		t.Logf("SIGKILL with %d of %d local and %d of %d outbound messages delivered", local, len(wantLocal), out, len(wantOut))
		if local+out >= total {
			t.Errorf("the kill came after every message was delivered: it tested nothing")
		}
	}

	p.site.Start()
	harness.Eventually(t, 120*time.Second, "every message delivered after the restarts", func() error {
		got, err := mailboxIDs(p.site, colleagues)
		if err != nil {
			return err
		}
		missing := 0
		for k := range wantLocal {
			if got[k] == 0 {
				missing++
			}
		}
		atSink := p.sink.CountByMessageID()
		for id := range wantOut {
			if atSink[id] == 0 {
				missing++
			}
		}
		if missing > 0 {
			return fmt.Errorf("%d of %d messages not delivered yet", missing, total)
		}
		return nil
	}, p.site.Process)
	harness.Quiesce(t, 60*time.Second, 2*time.Second, "deliveries settling", func() (string, error) {
		return fmt.Sprint(mailboxFiles(p.site, colleagues), len(p.sink.Accepted())), nil
	}, p.site.Process)
	t.Logf("all delivered %v after the injection", time.Since(start).Round(time.Millisecond))

	// Each colleague reads their mailbox over IMAP: each message once.
	for _, c := range colleagues {
		got := harness.CountByMessageID(p.imap(t, c))
		for k := range wantLocal {
			user, id, _ := strings.Cut(k, " ")
			if user != c.Username {
				continue
			}
			if got[id] != 1 {
				t.Errorf("%s's INBOX holds %s %d times, want once", c.Username, id, got[id])
			}
			delete(got, id)
		}
		for id, n := range got {
			t.Errorf("%s's INBOX holds %d unexpected message(s) with Message-ID %s", c.Username, n, id)
		}
	}
	if msgs := p.imap(t, alice); len(msgs) != 0 {
		t.Errorf("alice (the sender) has %d message(s), want none (a bounce?): first one:\n%.500q", len(msgs), msgs[0])
	}

	// The smarthost: every outbound message, duplicates only from the
	// documented window.
	var dups []string
	for id, n := range p.sink.CountByMessageID() {
		switch {
		case !wantOut[id]:
			t.Errorf("the smarthost got %d message(s) with unexpected Message-ID %s", n, id)
		case n > 1:
			dups = append(dups, fmt.Sprintf("%s ×%d", id, n))
		}
	}
	sort.Strings(dups)
	t.Logf("duplicates at the smarthost (250 answered, relay killed before recording it): %d %v", len(dups), dups)
	if limit := 2 * maxSessions; len(dups) > limit {
		t.Errorf("%d duplicates at the smarthost, more than the %d sessions open at the two kills could cause", len(dups), limit)
	}
}

// TestKillDuringRetryWait: the smarthost answers 451 to everything, so
// every outbound message waits in the relay's first retry tier; the relay
// is killed during that wait, the smarthost recovers, the relay is started
// again: each message reaches the smarthost exactly once, on its second
// attempt or later, and nothing bounces.
func TestKillDuringRetryWait(t *testing.T) {
	t.Parallel()
	const n = 20
	p := startPipeline(t, harness.SiteOptions{Config: map[string]any{
		"relay.delivery.retry.base":         "3s",
		"relay.delivery.dial_timeout":       "2s",
		"relay.delivery.command_timeout":    "2s",
		"relay.delivery.data_timeout":       "4s",
		"relay.delivery.retry.factor":       2,
		"relay.delivery.retry.cap":          "6s",
		"relay.delivery.retry.jitter":       0.1,
		"relay.delivery.retry.max_lifetime": "1h",
	}}, alice)
	p.sink.SetReply(func(harness.SinkMessage) error {
		return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 4, 2}, Message: "Not now"}
	})

	var jobs []job
	for i := range n {
		id := fmt.Sprintf("<retry-%02d@e2e.test>", i)
		to := fmt.Sprintf("partner%d@outside.example", i)
		jobs = append(jobs, job{id: id, from: alice.Address, rcpt: to, msg: harness.NewMessage(alice.Address, to, "to outside "+id, id, "Hello partner.")})
	}
	inject(t, p.site, 2, jobs)

	// Every message tried once, refused, and its retry scheduled.
	harness.Eventually(t, 60*time.Second, "a refused first attempt of every message and its retry scheduled", func() error {
		for _, j := range jobs {
			if p.sink.Attempts(j.id) == 0 {
				return fmt.Errorf("%s not attempted yet", j.id)
			}
		}
		retries, err := p.site.Metric("relay", "postern_relay_retries_scheduled_total")
		if err != nil {
			return err
		}
		if retries < n {
			return fmt.Errorf("%v retries scheduled", retries)
		}
		return nil
	}, p.site.Process)
	p.site.Kill()
	if got := len(p.sink.Accepted()); got != 0 {
		t.Fatalf("the sink accepted %d message(s) while it refused everything", got)
	}
	p.sink.SetReply(nil)
	p.site.Start()

	harness.Eventually(t, 60*time.Second, "every message at the smarthost after the restart", func() error {
		got := p.sink.CountByMessageID()
		for _, j := range jobs {
			if got[j.id] == 0 {
				return fmt.Errorf("%s not delivered yet (%d attempts)", j.id, p.sink.Attempts(j.id))
			}
		}
		return nil
	}, p.site.Process)
	harness.Quiesce(t, 60*time.Second, 2*time.Second, "deliveries settling", func() (string, error) {
		return fmt.Sprint(len(p.sink.Accepted())), nil
	}, p.site.Process)
	got := p.sink.CountByMessageID()
	for _, j := range jobs {
		if got[j.id] != 1 {
			t.Errorf("the smarthost got %s %d times, want once", j.id, got[j.id])
		}
		if a := p.sink.Attempts(j.id); a < 2 {
			t.Errorf("%s reached the smarthost in %d attempt(s), want the refused one and at least one more", j.id, a)
		}
	}
	if len(got) != n {
		t.Errorf("the smarthost got %d distinct messages, want %d", len(got), n)
	}
	if msgs := p.imap(t, alice); len(msgs) != 0 {
		t.Errorf("alice has %d message(s), want none (a bounce?)", len(msgs))
	}
}
