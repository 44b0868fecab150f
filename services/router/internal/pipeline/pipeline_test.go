package pipeline

import (
	"bytes"
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/postern/postern/api/events"
	"github.com/postern/postern/internal/msgbus"
	"github.com/postern/postern/internal/sitestate"
	"github.com/postern/postern/internal/testenv"
)

const group = "router-test"

// TestThroughTheBroker: inbound records in through the embedded broker, a
// real SQLite replica; out come delivery records (local, other site,
// outbound, a staff member's outbound with the manager's copy), a rejection
// status per unknown recipient, a DSN to the sender (never to the null
// sender), which is routed in turn, and dead letters with a clear reason
// for a malformed record and a loop. A second copy of an inbound record
// yields nothing new.
func TestThroughTheBroker(t *testing.T) {
	ctx := context.Background()
	bus := testenv.Bus(t)
	st, _ := newStore(t)
	reader := sdkmetric.NewManualReader()
	o := options(st)
	o.MeterProvider = sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	p := newPipeline(t, o)

	customer := rfc822(600, "From: Customer <c@customer.net>", "To: alice@example.com", "Subject: offer", "Message-ID: <m1@customer.net>")
	loop := rfc822(600, "Delivered-To: alice@example.com", "From: Customer <c@customer.net>", "Subject: again", "Message-ID: <m5@customer.net>")
	staff := rfc822(600, "From: Zhangsan <zhangsan@example.com>", "To: y@customer.net", "Subject: quote", "Message-ID: <zs-7@example.com>")
	msgs := []msgbus.Message{
		inboundMessage(t, inbound("m1", "smtp", "c@customer.net", customer, "alice@example.com", "carol@example.com", "nobody@example.com")),
		inboundMessage(t, inbound("m2", "auth:u-alice", "alice@example.com", customer, "x@customer.net")),
		inboundMessage(t, inbound("m3", "smtp", "", customer, "nobody@example.com")),
		{Topic: events.TopicInbound, Key: []byte("m4"), Value: customer, Headers: []msgbus.Header{
			{Key: events.HeaderType, Value: []byte(events.TopicInbound)}, {Key: events.HeaderVersion, Value: []byte("1")},
			{Key: events.HeaderID, Value: []byte("m4")}, {Key: events.HeaderSource, Value: []byte("smtp")}}},
		inboundMessage(t, inbound("m5", "smtp", "c@customer.net", loop, "alice@example.com")),
		inboundMessage(t, inbound("m1", "smtp", "c@customer.net", customer, "alice@example.com", "carol@example.com", "nobody@example.com")),
		inboundMessage(t, inbound("m7", "auth:u-zs", "zhangsan@example.com", staff, "y@customer.net")),
	}
	if err := bus.Publish(ctx, msgs...); err != nil {
		t.Fatal(err)
	}
	consume(t, bus, p.Subscription(group))
	// Seven records and the bounce of m1.
	waitCommitted(t, bus, group, events.TopicInbound, int64(len(msgs))+1, 45*time.Second)

	// The bounce: one, for m1's unknown recipient, to m1's sender.
	var bounces []events.Inbound
	for _, m := range topicRecords(t, bus, events.TopicInbound) {
		if header(m, events.HeaderSource) != events.SourceDSN {
			continue
		}
		in, err := events.DecodeInbound(record(m))
		if err != nil {
			t.Fatalf("bounce record: %v", err)
		}
		bounces = append(bounces, in)
	}
	if len(bounces) != 1 {
		t.Fatalf("%d bounces on mail.inbound, want 1 (for m1; none for m3's null sender)", len(bounces))
	}
	b := bounces[0]
	if b.MailFrom != "" || !slices.Equal(b.Recipients, []string{"c@customer.net"}) || b.Site != site {
		t.Errorf("bounce envelope: from %q to %v site %q; want <> to c@customer.net at %s", b.MailFrom, b.Recipients, b.Site, site)
	}
	for _, want := range []string{"Original-Envelope-Id: m1", "Final-Recipient: rfc822; nobody@example.com", "Status: 5.1.1", "no such mailbox", "Subject: offer"} {
		if !bytes.Contains(b.Message, []byte(want)) {
			t.Errorf("bounce message lacks %q:\n%s", want, b.Message)
		}
	}

	var got []string
	for _, d := range deliveries(t, bus) {
		got = append(got, summary(d))
		if d.InboundID != b.ID && !d.ReceivedAt.Equal(receivedAt) {
			t.Errorf("delivery %s: ReceivedAt %v, want the inbound's %v", d.ID, d.ReceivedAt, receivedAt)
		}
		if d.InboundID == "m7" && d.Destination == events.DestOutbound && !bytes.Contains(d.Message, []byte(`From: "Zhangsan" <sales@example.com>`)) {
			t.Errorf("m7 leaves without the sender rewrite:\n%s", d.Message)
		}
	}
	want := []string{
		"m1 local:u-alice", "m1 site:branch:carol@branch.example.org",
		"m2 outbound:alice@example.com:x@customer.net",
		"m7 outbound:sales@example.com:y@customer.net", "m7 local:u-mia",
		b.ID + " outbound::c@customer.net",
	}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("deliveries:\n got %q\nwant %q", got, want)
	}

	var statuses []string
	for _, m := range topicRecords(t, bus, events.TopicStatus) {
		s, err := events.DecodeStatus(record(m))
		if err != nil {
			t.Fatalf("status: %v", err)
		}
		statuses = append(statuses, s.InboundID+" "+s.Recipient+" "+s.Stage+" "+s.Outcome+" "+s.Source.Kind+" "+s.Source.SMTPSession)
		if !s.ReceivedAt.Equal(receivedAt) {
			t.Errorf("status %s %s: ReceivedAt %v, want the inbound's %v", s.InboundID, s.Recipient, s.ReceivedAt, receivedAt)
		}
		if !strings.Contains(s.Reason, "5.1.1") || !strings.Contains(s.Reason, "no such mailbox") {
			t.Errorf("status reason %q, want the status code and why", s.Reason)
		}
	}
	slices.Sort(statuses)
	wantStatuses := []string{"m1 nobody@example.com router rejected smtp s-m1", "m3 nobody@example.com router rejected smtp s-m3"}
	if !slices.Equal(statuses, wantStatuses) {
		t.Errorf("statuses:\n got %q\nwant %q", statuses, wantStatuses)
	}

	dead := map[string]string{}
	for _, m := range topicRecords(t, bus, events.TopicDeadLetter) {
		dead[string(m.Key)] = header(m, events.HeaderDeadLetterReason)
		if h := header(m, events.HeaderDeadLetterHandler); h != Name {
			t.Errorf("dead letter %s: handler %q, want %q", m.Key, h, Name)
		}
	}
	if len(dead) != 2 {
		t.Errorf("dead letters = %v, want m4 (malformed) and m5 (loop)", dead)
	}
	if r := dead["m4"]; !strings.Contains(r, "cannot be routed") || !strings.Contains(r, "malformed") {
		t.Errorf("m4 dead-letter reason %q, want it to say the record is malformed", r)
	}
	if r := dead["m5"]; !strings.Contains(r, "mail loop") || !strings.Contains(r, "alice@example.com") {
		t.Errorf("m5 dead-letter reason %q, want the loop and where", r)
	}

	// Case 3: the staff member's Message-ID is in the index, after publish.
	rec, err := st.MessageIndex().Lookup(ctx, "zs-7@example.com")
	if err != nil || rec.StaffUserID != "u-zs" || rec.SharedMailboxID != "sm-sales" {
		t.Errorf("message index for zs-7 = %+v, %v; want Zhangsan for sm-sales", rec, err)
	}
	// Every output's idempotency key is set.
	for _, key := range []string{"route:m1:local:u-alice", "route:m1:site:branch:u-carol", "route:status:m1:nobody@example.com", "route:dsn:" + b.ID} {
		if seen, err := st.Idempotency().Seen(ctx, key); !seen || err != nil {
			t.Errorf("key %s: seen %v, %v; want set", key, seen, err)
		}
	}

	// Metrics.
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(ctx, &rm); err != nil {
		t.Fatal(err)
	}
	sums := map[string]int64{}
	var routeCount uint64
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			switch data := m.Data.(type) {
			case metricdata.Sum[int64]:
				for _, dp := range data.DataPoints {
					k := m.Name
					for _, kv := range dp.Attributes.ToSlice() {
						k += " " + string(kv.Key) + "=" + kv.Value.AsString()
					}
					sums[k] += dp.Value
				}
			case metricdata.Histogram[float64]:
				for _, dp := range data.DataPoints {
					routeCount += dp.Count
				}
			}
		}
	}
	wantSums := map[string]int64{
		"postern.router.messages result=routed": 4, "postern.router.messages result=rejected": 1,
		"postern.router.messages result=duplicate": 1, "postern.router.messages result=deadletter": 1,
		"postern.router.messages result=malformed":    1,
		"postern.router.deliveries destination=local": 2, "postern.router.deliveries destination=site": 1,
		"postern.router.deliveries destination=outbound": 3, "postern.router.rejections": 2,
	}
	for k, v := range wantSums {
		if sums[k] != v {
			t.Errorf("%s = %d, want %d (all: %v)", k, sums[k], v, sums)
		}
	}
	if routeCount != 7 {
		t.Errorf("postern.router.route recorded %d times, want 7 (every decodable record)", routeCount)
	}
}

// TestRedeliveryWindow: the same record handled twice before its outputs'
// keys are set (a process killed between the broker's ack and
// AfterPublish) gives the same outputs with the same ids; once AfterPublish
// ran, handling it again gives nothing.
func TestRedeliveryWindow(t *testing.T) {
	ctx := context.Background()
	st, _ := newStore(t)
	p := newPipeline(t, options(st))
	in := inbound("w1", "pop3", "c@customer.net", rfc822(400, "From: c@customer.net", "Message-ID: <w1@customer.net>"),
		"alice@example.com", "sales@example.com", "nobody@example.com")
	r, _ := in.Encode()
	rec := msgbus.Record{Message: msgbus.NewMessage(events.TopicInbound, r), WireTopic: events.TopicInbound, Partition: 1, Offset: 9}

	first, err := p.Handle(ctx, rec)
	if err != nil {
		t.Fatal(err)
	}
	second, err := p.Handle(ctx, rec)
	if err != nil {
		t.Fatal(err)
	}
	ids := func(ms []msgbus.Message) []string {
		var out []string
		for _, m := range ms {
			k, _ := keyOf(m)
			out = append(out, m.Topic+" "+k)
		}
		return out
	}
	want := []string{
		"mail.delivery route:w1:local:u-alice", "mail.delivery route:w1:local:u-mia", "mail.delivery route:w1:local:u-zs",
		"mail.status route:status:w1:nobody@example.com",
	}
	if got := ids(first); len(got) != 5 || !slices.Equal(got[:4], want) || !strings.HasPrefix(got[4], "mail.inbound route:dsn:dsn-") {
		t.Fatalf("first outputs %q, want %q and a bounce", got, want)
	}
	if !slices.Equal(ids(first), ids(second)) {
		t.Errorf("handled again before AfterPublish: %q, want the same outputs %q", ids(second), ids(first))
	}
	if err := p.AfterPublish(ctx, rec, second); err != nil {
		t.Fatal(err)
	}
	third, err := p.Handle(ctx, rec)
	if err != nil || len(third) != 0 {
		t.Errorf("handled again after AfterPublish: %q, %v; want nothing", ids(third), err)
	}
}

// TestRoutedRecordIgnoresLaterDirectoryChanges: a record routed and
// recorded (AfterPublish done) then redelivered — a router killed before
// its commit — after the directory changed (bob moved to branch) yields
// nothing: not a delivery to bob's new site on top of the one already made
// to his old mailbox.
func TestRoutedRecordIgnoresLaterDirectoryChanges(t *testing.T) {
	ctx := context.Background()
	st, _ := newStore(t)
	p := newPipeline(t, options(st))
	in := inbound("m1", "pop3", "c@customer.net", rfc822(400, "From: c@customer.net", "Message-ID: <m1@customer.net>"), "bob@example.com")
	r, _ := in.Encode()
	rec := msgbus.Record{Message: msgbus.NewMessage(events.TopicInbound, r), WireTopic: events.TopicInbound, Partition: 0, Offset: 3}

	first, err := p.Handle(ctx, rec)
	if err != nil || len(first) != 1 {
		t.Fatalf("first routing: %d outputs, %v; want bob's delivery", len(first), err)
	}
	if k, dest := keyOf(first[0]); k != "route:m1:local:u-bob" || dest != events.DestLocal {
		t.Fatalf("first routing: %s %s, want bob's local mailbox", k, dest)
	}
	if err := p.AfterPublish(ctx, rec, first); err != nil {
		t.Fatal(err)
	}
	moved := user("u-bob", "bob", "Bob Baker", "bob@example.com", "branch", true, false)
	moved.Version = 2
	if err := st.Directory().Apply(ctx, sitestate.ChangeSet{Cursor: "2", Put: []sitestate.Entry{moved}}); err != nil {
		t.Fatal(err)
	}
	again, err := p.Handle(ctx, rec)
	if err != nil || len(again) != 0 {
		var ks []string
		for _, m := range again {
			k, _ := keyOf(m)
			ks = append(ks, k)
		}
		t.Errorf("redelivered after bob moved: outputs %q, %v; want none", ks, err)
	}
}

// TestTemporaryAndPermanent: a site state that does not answer is a
// temporary error; an unreadable record a permanent one.
func TestTemporaryAndPermanent(t *testing.T) {
	ctx := context.Background()
	st, _ := newStore(t)
	p := newPipeline(t, options(st))
	in := inbound("t1", "smtp", "c@customer.net", rfc822(200, "From: c@customer.net"), "alice@example.com")
	r, _ := in.Encode()
	rec := msgbus.Record{Message: msgbus.NewMessage(events.TopicInbound, r), WireTopic: events.TopicInbound}

	bad := rec
	bad.Headers = slices.DeleteFunc(slices.Clone(bad.Headers), func(h msgbus.Header) bool { return h.Key == events.HeaderVersion })
	if _, err := p.Handle(ctx, bad); !msgbus.IsPermanent(err) || !errors.Is(err, events.ErrUnsupported) && !errors.Is(err, events.ErrMalformed) {
		t.Errorf("record without a version: %v, want a permanent error saying why", err)
	}
	st.Close()
	_, err := p.Handle(ctx, rec)
	if err == nil || msgbus.IsPermanent(err) {
		t.Errorf("closed site state: %v, want a temporary error", err)
	}
	if err := p.AfterPublish(ctx, rec, []msgbus.Message{inboundMessage(t, in)}); err == nil || msgbus.IsPermanent(err) {
		t.Errorf("AfterPublish on a closed site state: %v, want a temporary error", err)
	}
}

func TestNewRefusesBadOptions(t *testing.T) {
	st, _ := newStore(t)
	for name, mutate := range map[string]func(*Options){
		"no site":            func(o *Options) { o.Routing.Site = "" },
		"no keys":            func(o *Options) { o.Keys = nil },
		"no reporting MTA":   func(o *Options) { o.ReportingMTA = " " },
		"no postmaster":      func(o *Options) { o.Postmaster = "" },
		"negative key ttl":   func(o *Options) { o.IdempotencyTTL = -time.Second },
		"bad unknown policy": func(o *Options) { o.Routing.Unknown = "drop" },
	} {
		o := options(st)
		mutate(&o)
		if _, err := New(o); err == nil {
			t.Errorf("%s: New succeeded", name)
		}
	}
}
