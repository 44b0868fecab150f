package e2e

// The end-to-end benchmark (issue 7, "Benchmark"): N messages (10,000 for
// the README) from POP3 and SMTP to mailboxes and the sink, through Postern
// in single-box mode (`postern serve`: all four services in one process,
// the embedded broker, SQLite, Maildir). It reports messages per second
// and the p50/p99 latency from acceptance to delivery, per recipient:
// acceptance is the mail.inbound record's postern-received-at (the fetcher
// publishing a download, the relay answering 250), delivery the `at` of
// the relay's mail.status "delivered" record for that inbound id and
// recipient; both are read back from the box's broker.
//
// It runs only when POSTERN_E2E_BENCH is set to the number of messages:
//
//	make bench-e2e                    # N=10000
//	POSTERN_E2E_BENCH=2000 CI=true go test -count=1 -run TestE2EBenchmark -v -timeout 30m ./e2e/
//
// POSTERN_E2E_BENCH_OUT=<file> also writes the results there (JSON).

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/api/events"
	"github.com/postern/postern/api/usersclient"
	"github.com/postern/postern/e2e/internal/harness"
	"github.com/postern/postern/internal/testenv"
)

// benchResult is what the benchmark reports.
type benchResult struct {
	Messages        int     `json:"messages"`
	POP3            int     `json:"pop3_messages"`
	SMTP            int     `json:"smtp_messages"`
	LocalDeliveries int     `json:"local_deliveries"`
	Outbound        int     `json:"outbound_deliveries"`
	Seconds         float64 `json:"seconds"`          // first acceptance to last delivery
	MessagesPerSec  float64 `json:"messages_per_sec"` // Messages / Seconds
	AcceptSeconds   float64 `json:"accept_seconds"`   // first to last acceptance
	LocalP50        float64 `json:"local_p50_seconds"`
	LocalP99        float64 `json:"local_p99_seconds"`
	OutboundP50     float64 `json:"outbound_p50_seconds"`
	OutboundP99     float64 `json:"outbound_p99_seconds"`
	AllP50          float64 `json:"all_p50_seconds"`
	AllP99          float64 `json:"all_p99_seconds"`
	CPUs            int     `json:"cpus"`
}

func TestE2EBenchmark(t *testing.T) {
	nText := os.Getenv("POSTERN_E2E_BENCH")
	if nText == "" {
		t.Skip("the end-to-end benchmark runs with POSTERN_E2E_BENCH=<messages> (make bench-e2e)")
	}
	total, err := strconv.Atoi(nText)
	if err != nil || total < 10 {
		t.Fatalf("POSTERN_E2E_BENCH=%q: want a number of messages, at least 10", nText)
	}
	rng := rand.New(rand.NewPCG(7, 11))
	sink := harness.StartSink(t)
	// A fresh single box creates its site (and its fetcher's token); the
	// administrator gives the site its domain.
	box := harness.StartSite(t, harness.SiteOptions{Name: "hq", SingleBox: true, Smarthost: sink.Addr, Config: harness.QuickFetcher()})
	users := box.Users
	users.SetSiteDomains(t, "hq", domain)

	postmaster := harness.User{Username: "postmaster", Password: "postmaster-password-9", Address: "postmaster@" + domain, InternetReceive: true}
	grace := harness.User{Username: "grace", Password: "grace-password-7", Address: "grace@" + domain, InternetReceive: true}
	locals := append(slices.Clone(colleagues), grace)
	people := append(append([]harness.User{alice}, locals...), postmaster)
	ids := map[string]string{}
	names := make([]string, len(people))
	for i, u := range people {
		ids[u.Username] = users.CreateUser(t, "hq", u)
		names[i] = u.Username
	}
	box.WaitForUsers(t, names...)

	// 40% from the ISP: two single-drop and two multi-drop mailboxes,
	// filled before their accounts exist.
	singles := []struct{ box, user string }{{"hq-chloe@isp.example", "chloe"}, {"hq-dimitri@isp.example", "dimitri"}}
	multis := []string{"hq-sales@isp.example", "hq-all@isp.example"}
	var mailboxes []testenv.DovecotUser
	for _, s := range singles {
		mailboxes = append(mailboxes, testenv.DovecotUser{Username: s.box, Password: "isp-" + s.user})
	}
	for i, m := range multis {
		mailboxes = append(mailboxes, testenv.DovecotUser{Username: m, Password: fmt.Sprintf("isp-multi-%d", i)})
	}
	isp := harness.StartISP(t, mailboxes...)
	body := func(i int) []string { // 0.1 to ~8 KiB
		lines := []string{"Hello,"}
		for n := range 1 + rng.IntN(120) {
			lines = append(lines, fmt.Sprintf("Line %d of message %d of the benchmark, some words to fill it.", n, i))
		}
		return append(lines, "Regards.")
	}
	wantLocal := map[string]int{} // username → messages
	wantOut := 0
	const customer = "customer@outside.example"
	nPOP3 := total * 2 / 5
	for i := range nPOP3 {
		id := fmt.Sprintf("<bench-pop3-%05d@outside.example>", i)
		var trace []string
		var to string
		if i%2 == 0 {
			s := singles[i/2%len(singles)]
			trace = []string{"Return-Path: <" + customer + ">", "Delivered-To: " + s.box, ispReceived(s.box)}
			to = s.box
			wantLocal[s.user]++
			isp.DeliverToMaildir(t, s.box, ispMessageBody(trace, customer, to, id, body(i)))
		} else {
			m := multis[i/2%len(multis)]
			r := locals[rng.IntN(len(locals))]
			trace = []string{"Return-Path: <" + customer + ">", "Delivered-To: " + m, ispReceived(""), "X-Original-To: " + r.Address}
			wantLocal[r.Username]++
			isp.DeliverToMaildir(t, m, ispMessageBody(trace, customer, r.Address, id, body(i)))
		}
	}
	// 60% over SMTP: three quarters submitted by alice (two thirds for a
	// colleague, one third for an outside address), a quarter from
	// outside through the inbound listener.
	var jobs []job
	for i := range total - nPOP3 {
		switch k := rng.IntN(4); {
		case k == 0:
			r := locals[rng.IntN(len(locals))]
			id := fmt.Sprintf("<bench-in-%05d@outside.example>", i)
			from := fmt.Sprintf("customer%d@outside.example", i%7)
			jobs = append(jobs, job{id: id, inbound: true, from: from, rcpt: r.Address, msg: harness.NewMessage(from, r.Address, "bench "+id, id, body(i)...)})
			wantLocal[r.Username]++
		case rng.IntN(3) < 2:
			r := locals[rng.IntN(len(locals))]
			id := fmt.Sprintf("<bench-local-%05d@e2e.test>", i)
			jobs = append(jobs, job{id: id, from: alice.Address, rcpt: r.Address, msg: harness.NewMessage(alice.Address, r.Address, "bench "+id, id, body(i)...)})
			wantLocal[r.Username]++
		default:
			to := fmt.Sprintf("partner%d@outside.example", rng.IntN(50))
			id := fmt.Sprintf("<bench-out-%05d@e2e.test>", i)
			jobs = append(jobs, job{id: id, from: alice.Address, rcpt: to, msg: harness.NewMessage(alice.Address, to, "bench "+id, id, body(i)...)})
			wantOut++
		}
	}
	wantLocalTotal := 0
	for _, n := range wantLocal {
		wantLocalTotal += n
	}
	t.Logf("%d messages: %d in %d ISP mailboxes, %d over SMTP (8 sessions); %d for local mailboxes, %d for the sink",
		total, nPOP3, len(mailboxes), len(jobs), wantLocalTotal, wantOut)

	// Go: the POP3 accounts (polled at once) and the SMTP sessions.
	start := time.Now()
	tlsModes := []usersclient.TLSMode{usersclient.TLSModeNone, usersclient.TLSModeStarttls}
	for i, s := range singles {
		a := isp.Account(t, "isp-"+s.user, "hq", s.box, tlsModes[i%2])
		mode, target := usersclient.POP3ModeSingle, ids[s.user]
		a.Mode, a.TargetUser = &mode, &target
		users.CreatePOP3Account(t, a)
	}
	for i, m := range multis {
		a := isp.Account(t, fmt.Sprintf("isp-multi-%d", i), "hq", m, tlsModes[i%2])
		mode, pm := usersclient.POP3ModeMulti, ids[postmaster.Username]
		a.Mode, a.Postmaster = &mode, &pm
		users.CreatePOP3Account(t, a)
	}
	inject(t, box, 8, jobs)
	t.Logf("%d SMTP messages accepted %v after the start", len(jobs), time.Since(start).Round(time.Millisecond))

	deadline := 10*time.Minute + time.Duration(total)*100*time.Millisecond
	harness.Eventually(t, deadline, "every message delivered", func() error {
		local := mailboxFiles(box, locals)
		out := len(sink.Accepted())
		if local < wantLocalTotal || out < wantOut {
			return fmt.Errorf("%d of %d local and %d of %d outbound so far", local, wantLocalTotal, out, wantOut)
		}
		return nil
	}, box.Process)
	t.Logf("every message delivered %v after the start", time.Since(start).Round(time.Millisecond))

	// Acceptance and delivery times, from the box's broker.
	broker := box.Addr("broker")
	received := map[string]time.Time{} // inbound id → postern-received-at
	for _, r := range harness.ReadTopic(t, broker, events.TopicInbound) {
		id, _ := r.Get(events.HeaderID)
		at, _ := r.Get(events.HeaderReceivedAt)
		ts, err := time.Parse(time.RFC3339Nano, at)
		if err != nil {
			t.Fatalf("inbound %s: %s %q: %v", id, events.HeaderReceivedAt, at, err)
		}
		received[id] = ts
	}
	t.Logf("mail.inbound read (%d records) %v after the start", len(received), time.Since(start).Round(time.Millisecond))
	// The relay publishes a delivery's status after the mailbox file or
	// the sink's 250, so the last statuses may trail the counts above.
	var statuses []events.Record
	harness.Eventually(t, time.Minute, "a delivered status for every delivery", func() error {
		statuses = harness.ReadTopic(t, broker, events.TopicStatus)
		n := 0
		for _, m := range statuses {
			if st, err := events.DecodeStatus(m); err == nil && st.Outcome == events.OutcomeDelivered && st.Stage == "relay" {
				n++
			}
		}
		if n < wantLocalTotal+wantOut {
			return fmt.Errorf("%d of %d so far", n, wantLocalTotal+wantOut)
		}
		return nil
	}, box.Process)
	var local, outbound, all []float64
	var first, last time.Time
	seen := map[string]bool{}
	for _, m := range statuses {
		st, err := events.DecodeStatus(m)
		if err != nil {
			t.Fatalf("status record: %v", err)
		}
		if st.Outcome != events.OutcomeDelivered || st.Stage != "relay" {
			if st.Outcome != events.OutcomeDelivered && st.Outcome != events.OutcomeDeferred {
				t.Errorf("unexpected outcome %s for %s (%s): %s", st.Outcome, st.Recipient, st.MessageID, st.Reason)
			}
			continue
		}
		key := st.InboundID + " " + strings.ToLower(st.Recipient)
		if seen[key] {
			continue
		}
		seen[key] = true
		acc, ok := received[st.InboundID]
		if !ok {
			t.Fatalf("status for inbound %s, which is not on mail.inbound", st.InboundID)
		}
		lat := st.At.Sub(acc).Seconds()
		all = append(all, lat)
		switch st.Destination {
		case events.DestLocal:
			local = append(local, lat)
		case events.DestOutbound:
			outbound = append(outbound, lat)
		}
		if first.IsZero() || acc.Before(first) {
			first = acc
		}
		if st.At.After(last) {
			last = st.At
		}
	}
	var firstAcc, lastAcc time.Time
	for _, ts := range received {
		if firstAcc.IsZero() || ts.Before(firstAcc) {
			firstAcc = ts
		}
		if ts.After(lastAcc) {
			lastAcc = ts
		}
	}
	if len(local) != wantLocalTotal || len(outbound) != wantOut {
		t.Errorf("delivered statuses: %d local, %d outbound; want %d and %d", len(local), len(outbound), wantLocalTotal, wantOut)
	}
	secs := last.Sub(first).Seconds()
	res := benchResult{
		Messages: total, POP3: nPOP3, SMTP: len(jobs), LocalDeliveries: len(local), Outbound: len(outbound),
		Seconds: secs, MessagesPerSec: float64(total) / secs, AcceptSeconds: lastAcc.Sub(firstAcc).Seconds(),
		LocalP50: percentile(local, 50), LocalP99: percentile(local, 99),
		OutboundP50: percentile(outbound, 50), OutboundP99: percentile(outbound, 99),
		AllP50: percentile(all, 50), AllP99: percentile(all, 99),
		CPUs: runtime.NumCPU(),
	}
	t.Logf("%d messages (%d POP3, %d SMTP) in %.1fs from the first acceptance to the last delivery: %.0f messages/s; all accepted within %.1fs",
		res.Messages, res.POP3, res.SMTP, res.Seconds, res.MessagesPerSec, res.AcceptSeconds)
	t.Logf("acceptance → delivery: local (%d) p50 %.2fs p99 %.2fs; outbound to the sink (%d) p50 %.2fs p99 %.2fs; all p50 %.2fs p99 %.2fs",
		res.LocalDeliveries, res.LocalP50, res.LocalP99, res.Outbound, res.OutboundP50, res.OutboundP99, res.AllP50, res.AllP99)
	if out := os.Getenv("POSTERN_E2E_BENCH_OUT"); out != "" {
		b, _ := json.MarshalIndent(res, "", "  ")
		if err := os.WriteFile(out, append(b, '\n'), 0o644); err != nil {
			t.Errorf("writing %s: %v", out, err)
		}
	}
}

// ispMessageBody is a message in an ISP mailbox with the given body lines.
func ispMessageBody(trace []string, from, to, id string, body []string) []byte {
	var b strings.Builder
	for _, l := range trace {
		b.WriteString(l + "\r\n")
	}
	b.Write(harness.NewMessage("Customer <"+from+">", to, "bench "+id, id, body...))
	return []byte(b.String())
}

// percentile returns the p-th percentile (nearest rank) of xs, 0 when empty.
func percentile(xs []float64, p float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	i := int(float64(len(s))*p/100+0.5) - 1
	return s[min(max(i, 0), len(s)-1)]
}
