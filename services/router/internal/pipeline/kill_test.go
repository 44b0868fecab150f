package pipeline

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/postern/postern/api/events"
	"github.com/postern/postern/internal/msgbus"
	"github.com/postern/postern/internal/sitestate"
	"github.com/postern/postern/internal/testenv"
)

// The kill test re-executes the test binary as a router process; these
// variables tell the child what to do.
const (
	envChild   = "POSTERN_ROUTER_TEST_CHILD"   // "router"
	envBrokers = "POSTERN_ROUTER_TEST_BROKERS" // comma-separated
	envState   = "POSTERN_ROUTER_TEST_STATE"   // SQLite site state file
	envKillAt  = "POSTERN_ROUTER_TEST_KILL_AT" // SIGKILL itself in the n-th AfterPublish, before any key is set; 0: never
)

func TestMain(m *testing.M) {
	if os.Getenv(envChild) == "router" {
		os.Exit(childRouter())
	}
	os.Exit(m.Run())
}

// childBusConfig is what testenv.Bus configures, for a process of its own.
func childBusConfig(brokers []string) msgbus.Config {
	cfg := msgbus.DefaultConfig()
	cfg.Brokers = brokers
	cfg.Retry = msgbus.RetryConfig{Initial: 10 * time.Millisecond, Max: 100 * time.Millisecond, Multiplier: 2, Jitter: 0.2, Attempts: 3}
	cfg.FetchMaxWait = 100 * time.Millisecond
	cfg.SessionTimeout = 6 * time.Second
	cfg.RebalanceTimeout = 2 * time.Second
	cfg.HeartbeatInterval = 500 * time.Millisecond
	return cfg
}

// childRouter is a router process: the pipeline on the shared SQLite state
// and the broker, consuming until it is killed (or a minute passes).
func childRouter() int {
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	bus, err := msgbus.New(childBusConfig(strings.Split(os.Getenv(envBrokers), ",")), msgbus.Options{Logger: logger})
	if err != nil {
		fmt.Fprintln(os.Stderr, "child: bus:", err)
		return 2
	}
	st, err := sitestate.OpenSQLite(ctx, os.Getenv(envState))
	if err != nil {
		fmt.Fprintln(os.Stderr, "child: state:", err)
		return 2
	}
	p, err := New(options(st))
	if err != nil {
		fmt.Fprintln(os.Stderr, "child: pipeline:", err)
		return 2
	}
	killAt, _ := strconv.Atoi(os.Getenv(envKillAt))
	var n atomic.Int64
	sub := p.Subscription(group)
	sub.AfterPublish = func(ctx context.Context, rec msgbus.Record, published []msgbus.Message) error {
		if n.Add(1) == int64(killAt) {
			fmt.Fprintf(os.Stderr, "child: %d outputs of %s/%d acknowledged; SIGKILL before setting their keys\n", len(published), rec.WireTopic, rec.Offset)
			_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
			select {}
		}
		return p.AfterPublish(ctx, rec, published)
	}
	err = bus.Consume(ctx, sub)
	fmt.Fprintln(os.Stderr, "child: Consume returned without being killed:", err)
	return 3
}

// startChild starts a router process.
func startChild(t *testing.T, bus *msgbus.Bus, state string, killAt int) (*exec.Cmd, *bytes.Buffer) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), envChild+"=router", envBrokers+"="+strings.Join(bus.Config().Brokers, ","),
		envState+"="+state, envKillAt+"="+strconv.Itoa(killAt))
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	})
	return cmd, &out
}

func killedBySIGKILL(err error) bool {
	var exit *exec.ExitError
	if !errors.As(err, &exit) {
		return false
	}
	ws, ok := exit.Sys().(syscall.WaitStatus)
	return ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL
}

// highWatermark is how many records the logical topic holds.
func highWatermark(t *testing.T, bus *msgbus.Bus, topic string) int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sum := int64(0)
	for p := range bus.Config().Partitions {
		c, err := kafka.DialLeader(ctx, "tcp", bus.Config().Brokers[0], bus.Topic(topic), p)
		if err != nil {
			t.Fatal(err)
		}
		last, err := c.ReadLastOffset()
		c.Close()
		if err != nil {
			t.Fatal(err)
		}
		sum += last
	}
	return sum
}

// TestKilledMidBatch: a router process is SIGKILLed while it works through
// 300 inbound records — first in the documented window (outputs
// acknowledged, keys not yet set), then a second one at whatever point it
// has reached — and another router finishes the work. Every expected
// delivery id is on mail.delivery; the same id twice comes only from the
// records in flight at a kill; no message and recipient ever get two
// different ids; every refused recipient has its status and every bounce
// is routed.
func TestKilledMidBatch(t *testing.T) {
	const n = 300
	ctx := context.Background()
	bus := testenv.Bus(t)
	st, state := newStore(t)
	p := newPipeline(t, options(st))

	// Mixed recipients: local, other site, outbound, refused (with a
	// bounce, itself routed outbound), a shared mailbox.
	var msgs []msgbus.Message
	var ins []events.Inbound
	for i := range n {
		id := fmt.Sprintf("k%03d", i)
		body := rfc822(1024, "From: Customer <c@customer.net>", "To: someone@example.com", "Subject: "+id, "Message-ID: <"+id+"@customer.net>")
		var in events.Inbound
		switch i % 5 {
		case 0:
			in = inbound(id, "smtp", "c@customer.net", body, "alice@example.com")
		case 1:
			in = inbound(id, "smtp", "c@customer.net", body, "carol@example.com", "bob@example.com")
		case 2:
			in = inbound(id, "auth:u-alice", "alice@example.com", body, "x@customer.net", "bob@example.com")
		case 3:
			in = inbound(id, "pop3", "c@customer.net", body, "alice@example.com", "nobody@example.com")
		case 4:
			in = inbound(id, "smtp", "c@customer.net", body, "sales@example.com")
		}
		ins = append(ins, in)
		msgs = append(msgs, inboundMessage(t, in))
	}
	if err := bus.Publish(ctx, msgs...); err != nil {
		t.Fatal(err)
	}
	// What each record must produce, decided by routing itself on the same
	// replica: message+recipient → delivery id.
	want := map[string]string{}
	wantStatus := map[string]bool{}
	for _, in := range ins {
		dec, err := p.router.Route(ctx, in)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range dec.Deliveries {
			want[d.InboundID+" "+d.Destination+" "+strings.Join(d.Recipients, ",")] = d.ID
		}
		for _, r := range dec.Rejections {
			wantStatus[in.ID+" "+r.Recipient] = true
		}
	}

	// Router 1 dies in the window of its 100th record.
	cmd, out := startChild(t, bus, state, 100)
	err := cmd.Wait()
	if !killedBySIGKILL(err) {
		t.Fatalf("router 1: %v; want killed by SIGKILL\n%s", err, out)
	}
	t.Logf("router 1: %s", strings.TrimSpace(out.String()))
	done := committed(t, bus, group, events.TopicInbound)
	if done != 99 {
		t.Fatalf("router 1 committed %d records; want 99 (killed in the 100th)", done)
	}

	// Router 2 is killed by us once it has done 100 more, wherever it is.
	cmd, out = startChild(t, bus, state, 0)
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	kills := 1
	deadline := time.Now().Add(40 * time.Second)
wait:
	for {
		select {
		case err := <-exited:
			t.Fatalf("router 2 ended on its own: %v\n%s", err, out)
		default:
		}
		if committed(t, bus, group, events.TopicInbound) >= done+100 {
			if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			if err := <-exited; !killedBySIGKILL(err) {
				t.Fatalf("router 2: %v; want killed by SIGKILL\n%s", err, out)
			}
			kills++
			break wait
		}
		if time.Now().After(deadline) {
			t.Fatalf("router 2 did not get through 100 records in 40s\n%s", out)
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Logf("router 2 killed after %d records committed in all", committed(t, bus, group, events.TopicInbound))

	// Router 3, in this process, finishes: every record of mail.inbound,
	// the bounces included, is committed.
	consume(t, bus, p.Subscription(group))
	deadline = time.Now().Add(45 * time.Second)
	for {
		hw, c := highWatermark(t, bus, events.TopicInbound), committed(t, bus, group, events.TopicInbound)
		if c == hw && hw > n {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 45s the group has committed %d of %d inbound records", c, hw)
		}
		time.Sleep(50 * time.Millisecond)
	}

	// Bounces: one id per refused message (a copy of one only from a kill).
	bounceIDs := map[string]int{}
	bounceOf := map[string]string{}
	for _, m := range topicRecords(t, bus, events.TopicInbound) {
		if header(m, events.HeaderSource) == events.SourceDSN {
			in, err := events.DecodeInbound(record(m))
			if err != nil {
				t.Fatal(err)
			}
			bounceIDs[in.ID]++
			env := string(in.Message[bytes.Index(in.Message, []byte("Original-Envelope-Id: "))+22:])
			env = env[:strings.IndexAny(env, "\r\n")]
			if prev, ok := bounceOf[env]; ok && prev != in.ID {
				t.Errorf("two bounces with different ids for %s: %s and %s", env, prev, in.ID)
			}
			bounceOf[env] = in.ID
		}
	}
	if len(bounceOf) != n/5 {
		t.Errorf("%d messages got a bounce, want %d", len(bounceOf), n/5)
	}

	got := map[string]map[string]int{} // message+recipient → id → records
	perID := map[string]int{}
	for _, d := range deliveries(t, bus) {
		k := d.InboundID + " " + d.Destination + " " + strings.Join(d.Recipients, ",")
		if got[k] == nil {
			got[k] = map[string]int{}
		}
		got[k][d.ID]++
		perID[d.ID]++
		if bounceIDs[d.InboundID] == 0 && want[k] == "" {
			t.Errorf("unexpected delivery %s (%s)", d.ID, k)
		}
	}
	for k, id := range want {
		if got[k][id] == 0 {
			t.Errorf("missing delivery %s (%s)", id, k)
		}
	}
	dupInbound := map[string]bool{}
	dups := 0
	for k, ids := range got {
		if len(ids) > 1 {
			t.Errorf("%s has %d different delivery ids: %v", k, len(ids), ids)
		}
		for _, c := range ids {
			if c > 1 {
				dups += c - 1
				dupInbound[strings.Fields(k)[0]] = true
			}
		}
	}
	for id := range bounceIDs {
		if len(got[id+" "+events.DestOutbound+" c@customer.net"]) == 0 {
			t.Errorf("bounce %s was not routed to c@customer.net", id)
		}
	}
	statusCount := map[string]int{}
	for _, m := range topicRecords(t, bus, events.TopicStatus) {
		s, err := events.DecodeStatus(record(m))
		if err != nil {
			t.Fatal(err)
		}
		statusCount[s.InboundID+" "+s.Recipient]++
	}
	for k := range wantStatus {
		if statusCount[k] == 0 {
			t.Errorf("no status for %s", k)
		}
	}
	if dl := topicRecords(t, bus, events.TopicDeadLetter); len(dl) != 0 {
		t.Errorf("%d dead letters, want none", len(dl))
	}
	t.Logf("%d delivery records for %d expected ids (+ bounces); %d duplicate records from %d messages in flight at %d kills", len(perID)+dups, len(want), dups, len(dupInbound), kills)
	if len(dupInbound) == 0 || len(dupInbound) > kills {
		t.Errorf("duplicates from %d messages (%v); want at least 1 (the record killed in the window) and at most %d (one per kill)", len(dupInbound), dupInbound, kills)
	}
}
