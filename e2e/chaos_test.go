package e2e

// The chaos test (issue 7): a site run as a per-site deployment runs it —
// the broker (`postern broker`), the fetcher, the router and the relay
// each in a process of its own, the site state in Redis, the directory on
// PostgreSQL — takes 2,000 mixed messages (POP3 single- and multi-drop,
// SMTP submission and inbound, local and outbound, some with several
// recipients) while each service process is killed with SIGKILL at random
// moments and started again. Afterwards every message is in each
// recipient's mailbox exactly once, the sink has each outbound message
// exactly once per recipient, and the ISP mailboxes are empty.
//
// The SMTP duplicate windows of RFC 1047 are not hidden. A message whose
// connection broke at or after the final dot (the client cannot know
// whether it was accepted, and sends it again) must still arrive exactly
// once: the relay gives the resend the same inbound id (same sender,
// envelope and bytes), and the router's idempotency keys drop it; the test
// prints how many such resends there were. On the smarthost side the
// window is the relay's own and cannot be closed: an outbound message the
// relay reported as an ambiguous resend (it was killed after DATA began
// and before it recorded the smarthost's answer) may arrive at the sink
// once more — only those, only once more for each report, and the test
// prints how many there were. Nothing may be in mail.deadletter.
//
// POSTERN_CHAOS_SEED=<n> replays a run's random choices (the mix, the kill
// moments; timing still varies); POSTERN_CHAOS_MESSAGES=<n> changes the
// number of messages (default 2000; 400 under the race detector),
// POSTERN_CHAOS_KILLS=<n> the SIGKILLs of each service process (default 4).

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/postern/postern/api/events"
	"github.com/postern/postern/api/usersclient"
	"github.com/postern/postern/e2e/internal/harness"
	"github.com/postern/postern/internal/testenv"
)

const (
	chaosDeadline   = 4 * time.Minute  // the whole test, from the first message on
	chaosLoad       = 20 * time.Second // the messages are sent over this time
	chaosKillWindow = 25 * time.Second // the kills come within this time from the start of the load
	chaosKillsEach  = 4                // SIGKILLs of each service process (POSTERN_CHAOS_KILLS)
	chaosMaxDown    = 1500 * time.Millisecond
	chaosSinkDelay  = 20 * time.Millisecond // the smarthost's time to answer a final dot
)

// chaosJob is one message of the chaos test sent over SMTP.
type chaosJob struct {
	id      string // Message-ID
	inbound bool   // through the inbound listener from outside; else submission
	user    harness.User
	from    string
	rcpts   []string
	msg     []byte
}

// chaosISPMessage is one message of the chaos test put into an ISP mailbox.
type chaosISPMessage struct {
	box string
	msg []byte
}

// chaosKill is one planned SIGKILL: the process, when (from the start of
// the load) and how long it stays down.
type chaosKill struct {
	proc *harness.Process
	at   time.Duration
	down time.Duration
}

func chaosSeed(t *testing.T) uint64 {
	if s := os.Getenv("POSTERN_CHAOS_SEED"); s != "" {
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("POSTERN_CHAOS_SEED=%q: %v", s, err)
		}
		return n
	}
	return uint64(time.Now().UnixNano())
}

func TestChaos(t *testing.T) {
	total := 2000
	if harness.RaceEnabled {
		total = 400 // the race detector makes every process several times slower
	}
	if s := os.Getenv("POSTERN_CHAOS_MESSAGES"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 20 {
			t.Fatalf("POSTERN_CHAOS_MESSAGES=%q: want a number of at least 20", s)
		}
		total = n
	}
	killsEach := chaosKillsEach
	if s := os.Getenv("POSTERN_CHAOS_KILLS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			t.Fatalf("POSTERN_CHAOS_KILLS=%q: want a number of at least 1", s)
		}
		killsEach = n
	}
	seed := chaosSeed(t)
	t.Logf("chaos seed %d (rerun with POSTERN_CHAOS_SEED=%d)", seed, seed)
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))

	redisAddr := testenv.RedisAddr(t)
	users := harness.StartUsersPostgres(t, testenv.PostgresDB(t))
	sink := harness.StartSink(t)
	sink.SetDelay(chaosSinkDelay)
	users.CreateSite(t, "hq", domain)

	// The people: two who send to the Internet, five colleagues, the
	// multi-drop postmaster.
	frank := harness.User{Username: "frank", Password: "frank-password-6", Address: "frank@" + domain, DisplayName: "Frank Weber", InternetSend: true, InternetReceive: true}
	grace := harness.User{Username: "grace", Password: "grace-password-7", Address: "grace@" + domain, InternetReceive: true}
	postmaster := harness.User{Username: "postmaster", Password: "postmaster-password-9", Address: "postmaster@" + domain, InternetReceive: true}
	senders := []harness.User{alice, frank}
	locals := append(append([]harness.User{}, colleagues...), grace) // bob, chloe, dimitri, emma, grace
	people := append(append(append([]harness.User{}, senders...), locals...), postmaster)
	ids := map[string]string{}
	for _, u := range people {
		ids[u.Username] = users.CreateUser(t, "hq", u)
	}

	// The ISP: three single-drop mailboxes (one per colleague) and two
	// multi-drop ones.
	singles := []struct{ box, user string }{
		{"hq-chloe@isp.example", "chloe"}, {"hq-dimitri@isp.example", "dimitri"}, {"hq-emma@isp.example", "emma"},
	}
	multis := []string{"hq-sales@isp.example", "hq-all@isp.example"}
	var mailboxes []testenv.DovecotUser
	for _, s := range singles {
		mailboxes = append(mailboxes, testenv.DovecotUser{Username: s.box, Password: "isp-" + s.user})
	}
	for i, m := range multis {
		mailboxes = append(mailboxes, testenv.DovecotUser{Username: m, Password: fmt.Sprintf("isp-multi-%d", i)})
	}
	isp := harness.StartISP(t, mailboxes...)

	cfg := harness.QuickFetcher()
	for k, v := range map[string]any{
		// Consumers of a killed process leave their group after the
		// session timeout (6s is the broker's minimum).
		"bus.session_timeout":    "6s",
		"bus.rebalance_timeout":  "3s",
		"bus.heartbeat_interval": "500ms",
		"bus.fetch_max_wait":     "250ms",

		"fetcher.download.concurrency": len(mailboxes),

		// A send cut by SIGKILL leaves its lease for dial + 4·command +
		// data: 14s here.
		"relay.delivery.dial_timeout":       "2s",
		"relay.delivery.command_timeout":    "2s",
		"relay.delivery.data_timeout":       "4s",
		"relay.delivery.retry.base":         "500ms",
		"relay.delivery.retry.cap":          "2s",
		"relay.delivery.retry.max_lifetime": "1h",
	} {
		cfg[k] = v
	}
	site := harness.StartSplitSite(t, harness.SplitSiteOptions{
		Name: "hq", Users: users, Smarthost: sink.Addr, RedisAddr: redisAddr, Config: cfg,
	})
	names := make([]string, len(people))
	for i, u := range people {
		names[i] = u.Username
	}
	site.WaitForUsers(t, names...)

	// The POP3 accounts: plaintext, STARTTLS and implicit TLS.
	tlsModes := []usersclient.TLSMode{usersclient.TLSModeNone, usersclient.TLSModeStarttls, usersclient.TLSModeTLS}
	for i, s := range singles {
		a := isp.Account(t, "isp-"+s.user, "hq", s.box, tlsModes[i%len(tlsModes)])
		mode, target := usersclient.POP3ModeSingle, ids[s.user]
		a.Mode, a.TargetUser = &mode, &target
		users.CreatePOP3Account(t, a)
	}
	for i, m := range multis {
		a := isp.Account(t, fmt.Sprintf("isp-multi-%d", i), "hq", m, tlsModes[(i+1)%len(tlsModes)])
		mode, pm := usersclient.POP3ModeMulti, ids[postmaster.Username]
		a.Mode, a.Postmaster = &mode, &pm
		users.CreatePOP3Account(t, a)
	}

	// The messages: 40% from the ISP, 60% over SMTP.
	wantLocal := map[string]int{}  // "username Message-ID" → 1
	wantOut := map[string]int{}    // "Message-ID recipient" → 1
	body := func(i int) []string { // 1 to ~8 KiB
		lines := []string{"Hello,"}
		for n := range 1 + rng.IntN(120) {
			lines = append(lines, fmt.Sprintf("Line %d of message %d of the chaos test, some words to fill it.", n, i))
		}
		return append(lines, "Regards.")
	}
	addLocal := func(id, user string) { wantLocal[user+" "+id]++ }
	addOut := func(id, rcpt string) { wantOut[id+" "+rcpt]++ }
	pick := func(n int) []harness.User { // n different local colleagues
		out := slices.Clone(locals)
		rng.Shuffle(len(out), func(i, j int) { out[i], out[j] = out[j], out[i] })
		return out[:n]
	}
	const customer = "customer@outside.example"
	nPOP3 := total * 2 / 5
	var ispMsgs []chaosISPMessage
	for i := range nPOP3 {
		id := fmt.Sprintf("<chaos-pop3-%04d@outside.example>", i)
		var trace []string
		var box string
		if i%2 == 0 {
			s := singles[rng.IntN(len(singles))]
			box = s.box
			trace = []string{"Return-Path: <" + customer + ">", "Delivered-To: " + box, ispReceived(box)}
			addLocal(id, s.user)
		} else {
			box = multis[rng.IntN(len(multis))]
			rs := pick(1 + rng.IntN(2))
			trace = []string{"Return-Path: <" + customer + ">", "Delivered-To: " + box, ispReceived("")}
			if len(rs) == 1 {
				trace = append(trace, "X-Original-To: "+rs[0].Address)
			} else {
				trace = append(trace, "Envelope-To: "+rs[0].Address+", "+rs[1].Address)
			}
			for _, r := range rs {
				addLocal(id, r.Username)
			}
		}
		msg := ispMessage(trace, "Customer <"+customer+">", "Sales <sales@outside.example>", "chaos pop3 "+id, id)
		ispMsgs = append(ispMsgs, chaosISPMessage{box: box, msg: msg})
	}
	var jobs []chaosJob
	for i := range total - nPOP3 {
		sender := senders[rng.IntN(len(senders))]
		j := chaosJob{user: sender, from: sender.Address}
		kind := rng.IntN(100)
		switch {
		case kind < 12: // from outside through the inbound listener
			j.id = fmt.Sprintf("<chaos-in-%04d@outside.example>", i)
			j.inbound, j.from = true, fmt.Sprintf("customer%d@outside.example", i%7)
			for _, r := range pick(1 + rng.IntN(2)) {
				j.rcpts = append(j.rcpts, r.Address)
				addLocal(j.id, r.Username)
			}
		case kind < 45: // one colleague
			j.id = fmt.Sprintf("<chaos-local-%04d@e2e.test>", i)
			r := pick(1)[0]
			j.rcpts = []string{r.Address}
			addLocal(j.id, r.Username)
		case kind < 60: // two or three colleagues
			j.id = fmt.Sprintf("<chaos-locals-%04d@e2e.test>", i)
			for _, r := range pick(2 + rng.IntN(2)) {
				j.rcpts = append(j.rcpts, r.Address)
				addLocal(j.id, r.Username)
			}
		case kind < 80: // one outside address
			j.id = fmt.Sprintf("<chaos-out-%04d@e2e.test>", i)
			to := fmt.Sprintf("partner%d@outside.example", rng.IntN(40))
			j.rcpts = []string{to}
			addOut(j.id, to)
		case kind < 90: // two outside addresses
			j.id = fmt.Sprintf("<chaos-outs-%04d@e2e.test>", i)
			a := rng.IntN(40)
			for _, n := range []int{a, a + 1 + rng.IntN(20)} {
				to := fmt.Sprintf("partner%d@outside.example", n)
				j.rcpts = append(j.rcpts, to)
				addOut(j.id, to)
			}
		default: // a colleague and an outside address
			j.id = fmt.Sprintf("<chaos-mixed-%04d@e2e.test>", i)
			r := pick(1)[0]
			to := fmt.Sprintf("partner%d@outside.example", rng.IntN(40))
			j.rcpts = []string{r.Address, to}
			addLocal(j.id, r.Username)
			addOut(j.id, to)
		}
		j.msg = harness.NewMessage(j.from, strings.Join(j.rcpts, ", "), "chaos "+j.id, j.id, body(i)...)
		jobs = append(jobs, j)
	}
	t.Logf("%d messages: %d from the ISP (%d single-drop, %d multi-drop mailboxes), %d over SMTP; %d mailbox deliveries and %d outbound recipients expected",
		total, len(ispMsgs), len(singles), len(multis), len(jobs), len(wantLocal), len(wantOut))

	// The kill plan: each service process chaosKillsEach times, at random
	// moments of the load and a little after, each down for a random while.
	var plan []chaosKill
	for _, p := range site.Services() {
		for range killsEach {
			plan = append(plan, chaosKill{proc: p,
				at:   2*time.Second + time.Duration(rng.Int64N(int64(chaosKillWindow-2*time.Second))),
				down: time.Duration(rng.Int64N(int64(chaosMaxDown)))})
		}
	}
	slices.SortFunc(plan, func(a, b chaosKill) int { return int(a.at - b.at) })

	start := time.Now()
	deadline := start.Add(chaosDeadline)

	// SMTP: four sessions, fed at an even pace over chaosLoad.
	smtpRes := newChaosSMTP()
	feed := make(chan chaosJob)
	var workers sync.WaitGroup
	// Should the test stop early (a failed start or kill), the feeder and
	// the workers stop too, before the cleanups remove what they use.
	load, stopLoad := context.WithCancel(context.Background())
	t.Cleanup(func() { stopLoad(); workers.Wait() })
	for range 4 {
		workers.Go(func() { smtpRes.worker(load, t, site.Site, feed, deadline) })
	}
	go func() {
		defer close(feed)
		every := chaosLoad / time.Duration(len(jobs))
		for i, j := range jobs {
			if d := time.Until(start.Add(time.Duration(i) * every)); d > 0 {
				time.Sleep(d)
			}
			select {
			case feed <- j:
			case <-load.Done():
				return
			}
		}
	}()

	// The ISP mailboxes filled in ten batches over the first half of the
	// load (polls come every 30s and at every start of the fetcher), and
	// the kill plan carried out, both from this goroutine.
	batches := 10
	nextBatch := 0
	for len(plan) > 0 || nextBatch < batches {
		now := time.Since(start)
		batchAt := time.Duration(nextBatch) * (chaosLoad / 2) / time.Duration(batches)
		if nextBatch < batches && now >= batchAt {
			lo, hi := nextBatch*len(ispMsgs)/batches, (nextBatch+1)*len(ispMsgs)/batches
			for _, m := range ispMsgs[lo:hi] {
				isp.Deliver(t, m.box, m.msg)
			}
			nextBatch++
			continue
		}
		if len(plan) > 0 && now >= plan[0].at {
			k := plan[0]
			plan = plan[1:]
			k.proc.Kill()
			t.Logf("%6.1fs SIGKILL %s; down for %v", time.Since(start).Seconds(), k.proc.Name, k.down.Round(time.Millisecond))
			time.Sleep(k.down)
			k.proc.Start()
			t.Logf("%6.1fs %s started again", time.Since(start).Seconds(), k.proc.Name)
			continue
		}
		time.Sleep(20 * time.Millisecond)
	}
	workers.Wait()
	smtpRes.check(t, len(jobs))
	t.Logf("%6.1fs the load and the kills are over: %d SMTP messages accepted (%d submissions cut at or after the final dot and sent again)",
		time.Since(start).Seconds(), len(jobs), len(smtpRes.ambiguous))

	// Everything delivered, at least once.
	procs := append(site.Services(), site.Broker)
	harness.Eventually(t, time.Until(deadline), "every message delivered after the kills", func() error {
		got, err := mailboxIDs(site.Site, locals)
		if err != nil {
			return err
		}
		missing := 0
		for k := range wantLocal {
			if got[k] == 0 {
				missing++
			}
		}
		atSink := sinkCounts(sink)
		for k := range wantOut {
			if atSink[k] == 0 {
				missing++
			}
		}
		if missing > 0 {
			return fmt.Errorf("%d of %d deliveries missing", missing, len(wantLocal)+len(wantOut))
		}
		return nil
	}, procs...)
	t.Logf("%6.1fs every message delivered", time.Since(start).Seconds())
	harness.Eventually(t, time.Until(deadline), "the ISP mailboxes emptied", func() error {
		for _, b := range mailboxes {
			n, err := isp.Count(b.Username)
			if err != nil {
				return err
			}
			if n > 0 {
				return fmt.Errorf("%s holds %d message(s)", b.Username, n)
			}
		}
		return nil
	}, procs...)
	t.Logf("%6.1fs the ISP mailboxes are empty", time.Since(start).Seconds())
	harness.Quiesce(t, time.Until(deadline)+10*time.Second, 3*time.Second, "deliveries settling", func() (string, error) {
		return fmt.Sprint(mailboxFiles(site.Site, people), len(sink.Accepted())), nil
	}, procs...)

	// Exactly once, but for the ambiguous cases, which are reported.
	resends := ambiguousResends(t, site.Relay)
	got, err := mailboxIDs(site.Site, people)
	if err != nil {
		t.Fatal(err)
	}
	// A submission cut at or after the final dot and sent again is
	// delivered once like any other (the resend has the same inbound id
	// and is dropped); only an ambiguous resend the relay reported may
	// reach the sink once more (that recipient).
	var outDups, cutDelivered []string
	for k, n := range got {
		user, id, _ := strings.Cut(k, " ")
		switch want := wantLocal[k]; {
		case want == 0:
			t.Errorf("%s's mailbox holds %d message(s) %s, which is not theirs", user, n, id)
		case n == want:
			if smtpRes.ambiguous[id] {
				cutDelivered = append(cutDelivered, k)
			}
		default:
			t.Errorf("%s's mailbox holds %s %d times, want once (connection cut at or after the final dot and sent again: %v)",
				user, id, n, smtpRes.ambiguous[id])
		}
	}
	for k, n := range sinkCounts(sink) {
		id, rcpt, _ := strings.Cut(k, " ")
		switch want := wantOut[k]; {
		case want == 0:
			t.Errorf("the sink got %d message(s) %s for %s, which were not sent out", n, id, rcpt)
		case n == want:
			if smtpRes.ambiguous[id] {
				cutDelivered = append(cutDelivered, k)
			}
		case n > want && n <= want+resends[k]:
			outDups = append(outDups, k)
		default:
			t.Errorf("the sink got %s for %s %d times, want once (connection cut at or after the final dot and sent again: %v; ambiguous resends reported by the relay: %d)",
				id, rcpt, n, smtpRes.ambiguous[id], resends[k])
		}
	}
	if dl := harness.ReadTopic(t, site.Broker.Addr("broker"), events.TopicDeadLetter); len(dl) > 0 {
		t.Errorf("%d record(s) in %s, want none; the first: %s", len(dl), events.TopicDeadLetter, deadLetterSummary(dl[0]))
	}
	slices.Sort(outDups)
	slices.Sort(cutDelivered)
	t.Logf("SMTP messages whose connection was cut at or after the final dot and which were sent again: %d; their deliveries, each exactly once: %d %v",
		len(smtpRes.ambiguous), len(cutDelivered), cutDelivered)
	nResends := 0
	for _, n := range resends {
		nResends += n
	}
	t.Logf("ambiguous resends reported by the relay: %d, at the sink twice: %d %v", nResends, len(outDups), outDups)
	t.Logf("%d kills, %d messages, %d mailbox deliveries and %d outbound recipients checked in %v",
		killsEach*len(procs), total, len(wantLocal), len(wantOut), time.Since(start).Round(time.Second))
}

// sinkCounts counts the sink's accepted messages per "Message-ID recipient".
func sinkCounts(sink *harness.Sink) map[string]int {
	n := map[string]int{}
	for _, m := range sink.Accepted() {
		for _, r := range m.To {
			n[m.MessageID+" "+strings.ToLower(r)]++
		}
	}
	return n
}

// ambiguousResends reads the relay's log (every run) for the outbound
// recipients it reported as ambiguous resends: how many times per
// "Message-ID recipient".
func ambiguousResends(t *testing.T, relay *harness.Process) map[string]int {
	t.Helper()
	out := map[string]int{}
	for _, line := range strings.Split(relay.Log(), "\n") {
		if !strings.Contains(line, `"ambiguous resend`) {
			continue
		}
		var rec struct {
			MessageID string `json:"message_id"`
			Recipient string `json:"recipient"`
		}
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			continue // a line cut by SIGKILL
		}
		out[rec.MessageID+" "+strings.ToLower(rec.Recipient)]++
	}
	return out
}

// chaosSMTP sends the chaos test's SMTP messages the way a mail client
// does: a message is sent again (in a new session) until the server
// answered 250 to it, and a message whose connection broke at or after the
// final dot is noted as ambiguous (the server may have it already).
type chaosSMTP struct {
	mu        sync.Mutex
	accepted  int
	ambiguous map[string]bool
	errs      []string
}

func newChaosSMTP() *chaosSMTP { return &chaosSMTP{ambiguous: map[string]bool{}} }

func (r *chaosSMTP) worker(ctx context.Context, t *testing.T, site *harness.Site, jobs <-chan chaosJob, deadline time.Time) {
	sessions := map[string]*harness.SMTPClient{} // "inbound" or a username → its session
	defer func() {
		for _, c := range sessions {
			_ = c.Close()
		}
	}()
	for j := range jobs {
		key := j.user.Username
		if j.inbound {
			key = "inbound"
		}
		for attempt := 1; ; attempt++ {
			if ctx.Err() != nil {
				return
			}
			if time.Now().After(deadline) {
				r.fail("%s: not accepted before the deadline", j.id)
				break
			}
			c := sessions[key]
			if c == nil {
				var err error
				if j.inbound {
					c, err = site.DialInbound(t)
				} else {
					c, err = site.DialSubmission(t, j.user.Username, j.user.Password)
				}
				if err != nil { // the relay is down or starting
					time.Sleep(100 * time.Millisecond)
					continue
				}
				sessions[key] = c
			}
			err, ambiguous := c.SendChecked(j.from, j.rcpts, j.msg)
			if err == nil {
				r.mu.Lock()
				r.accepted++
				r.mu.Unlock()
				break
			}
			if ambiguous {
				r.mu.Lock()
				r.ambiguous[j.id] = true
				r.mu.Unlock()
			}
			c.Abort()
			delete(sessions, key)
			var se *smtp.SMTPError
			if errors.As(err, &se) && se.Code >= 500 {
				r.fail("%s: refused: %v", j.id, err)
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
}

func (r *chaosSMTP) fail(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.errs = append(r.errs, fmt.Sprintf(format, args...))
}

func (r *chaosSMTP) check(t *testing.T, n int) {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.errs) > 0 {
		t.Fatalf("%d of %d SMTP messages were not accepted:\n%s", len(r.errs), n, strings.Join(r.errs, "\n"))
	}
	if r.accepted != n {
		t.Fatalf("%d of %d SMTP messages accepted", r.accepted, n)
	}
}

// deadLetterSummary names a dead-lettered record by its reason and origin.
func deadLetterSummary(m events.Record) string {
	var parts []string
	for _, h := range m.Headers {
		if strings.HasPrefix(h.Key, "postern-dlq-") || h.Key == events.HeaderID {
			parts = append(parts, h.Key+"="+string(h.Value))
		}
	}
	return strings.Join(parts, " ")
}
