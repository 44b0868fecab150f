package msgbus

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/postern/postern/api/events"
)

// TestDeadLetter: records whose handler fails for good (a permanent
// error, a temporary error until the attempts run out, a panic) land in the
// dead-letter topic as they were, with the dead-letter headers added; their
// offsets are committed and the consumer goes on with the next record.
func TestDeadLetter(t *testing.T) {
	ctx := ctxTimeout(t, 60*time.Second)
	addrs := startBroker(t)
	cfg := testConfig(addrs)
	cfg.TopicPrefix = "branch"
	logs := &logRecorder{}
	tp := sdktrace.NewTracerProvider()
	t.Cleanup(func() { tp.Shutdown(context.Background()) })
	b := newBus(t, cfg, Options{Logger: slog.New(logs), TracerProvider: tp})
	const group, in, out = "router", events.TopicInbound, events.TopicDelivery
	if err := b.EnsureTopics(ctx, in, out, events.TopicDeadLetter); err != nil {
		t.Fatal(err)
	}

	traceparents := map[string]string{} // value → traceparent of the original
	calls := map[string]int{}
	var mu sync.Mutex
	handler := func(_ context.Context, rec Record) ([]Message, error) {
		mu.Lock()
		calls[string(rec.Value)]++
		traceparents[string(rec.Value)], _ = rec.Header("traceparent")
		mu.Unlock()
		switch string(rec.Value) {
		case "unparseable":
			return nil, Permanent(errors.New("parse envelope: no recipients"))
		case "smarthost-down":
			return nil, errors.New("dial smarthost: connection refused")
		case "bug":
			panic("handler bug: index out of range")
		}
		return []Message{{Topic: out, Key: rec.Key, Value: rec.Value}}, nil
	}
	// One key: one partition, in this order.
	values := []string{"unparseable", "smarthost-down", "bug", "fine"}
	for _, v := range values {
		msg := Message{Topic: in, Key: []byte("same-key"), Value: []byte(v),
			Headers: []Header{{Key: "x-envelope-from", Value: []byte("alice@example.com")}}}
		if err := b.Publish(ctx, msg); err != nil {
			t.Fatal(err)
		}
	}
	stop := consumeInBackground(t, b, Subscription{Group: group, Topic: in, Name: "route", Handler: handler})

	eventually(t, 30*time.Second, "the record after the failing ones to be handled", func() bool {
		return len(topicRecords(t, ctx, addrs[0], b.Topic(out))) == 1
	})
	var partition int
	eventually(t, 30*time.Second, "every offset committed", func() bool {
		for p, off := range committed(t, ctx, addrs[0], group, b.Topic(in), cfg.Partitions) {
			if off == int64(len(values)) {
				partition = p
				return true
			}
		}
		return false
	})
	if err := stop(); err != nil {
		t.Fatalf("Consume: %v", err)
	}

	dead := topicRecords(t, ctx, addrs[0], b.Topic(events.TopicDeadLetter))
	if len(dead) != 3 {
		t.Fatalf("dead-letter topic holds %d records, want 3", len(dead))
	}
	byValue := map[string]kafka.Message{}
	for _, m := range dead {
		byValue[string(m.Value)] = m
	}
	for i, tt := range []struct {
		value, reason, attempts string
	}{
		{"unparseable", "parse envelope: no recipients", "1"},
		{"smarthost-down", "gave up after 3 attempts: dial smarthost: connection refused", "3"},
		{"bug", "handler panicked: handler bug: index out of range", "1"},
	} {
		m, ok := byValue[tt.value]
		if !ok {
			t.Errorf("%q is not in the dead-letter topic", tt.value)
			continue
		}
		if string(m.Key) != "same-key" {
			t.Errorf("%q: key %q, want the original", tt.value, m.Key)
		}
		want := map[string]string{
			"x-envelope-from":                "alice@example.com",
			events.HeaderDeadLetterTopic:     "branch.mail.inbound",
			events.HeaderDeadLetterPartition: strconv.Itoa(partition),
			events.HeaderDeadLetterOffset:    strconv.Itoa(i),
			events.HeaderDeadLetterHandler:   "route",
			events.HeaderDeadLetterGroup:     group,
			events.HeaderDeadLetterAttempts:  tt.attempts,
		}
		for k, v := range want {
			if got, _ := header(m, k); got != v {
				t.Errorf("%q: header %s = %q, want %q", tt.value, k, got, v)
			}
		}
		if got, _ := header(m, events.HeaderDeadLetterReason); !strings.Contains(got, tt.reason) {
			t.Errorf("%q: reason %q, want it to contain %q", tt.value, got, tt.reason)
		}
		if got, _ := header(m, events.HeaderDeadLetterTime); !validTime(got) {
			t.Errorf("%q: time %q is not RFC 3339 near now", tt.value, got)
		}
		if got, _ := header(m, "traceparent"); got == "" || got != traceparents[tt.value] {
			t.Errorf("%q: traceparent %q, want the original record's %q", tt.value, got, traceparents[tt.value])
		}
	}
	if calls["smarthost-down"] != 3 || calls["unparseable"] != 1 || calls["bug"] != 1 || calls["fine"] != 1 {
		t.Errorf("handler calls = %v, want smarthost-down 3 (the attempts), the others 1", calls)
	}
	if n := logs.count(slog.LevelError, "record dead-lettered"); n != 3 {
		t.Errorf("%d error logs for dead letters, want one per record (3)", n)
	}
	if n := logs.count(slog.LevelWarn, "handler failed; retrying"); n != 2 {
		t.Errorf("%d retry warnings, want 2 (attempts 1 and 2 of 3)", n)
	}
}

func validTime(s string) bool {
	tm, err := time.Parse(time.RFC3339, s)
	return err == nil && time.Since(tm) < time.Minute && time.Until(tm) < time.Minute
}

// TestRetryThenSuccess: a temporary error that goes away is retried and
// the record is handled once successfully; nothing is dead-lettered.
func TestRetryThenSuccess(t *testing.T) {
	ctx := ctxTimeout(t, 60*time.Second)
	addrs := startBroker(t)
	b := newBus(t, testConfig(addrs), Options{})
	h := &countingHandler{fn: func(_ context.Context, rec Record, call int64) ([]Message, error) {
		if call < 3 {
			return nil, errors.New("redis: connection reset")
		}
		return []Message{{Topic: events.TopicDelivery, Value: rec.Value}}, nil
	}}
	if err := b.EnsureTopics(ctx, events.TopicInbound, events.TopicDelivery, events.TopicDeadLetter); err != nil {
		t.Fatal(err)
	}
	if err := b.Publish(ctx, Message{Topic: events.TopicInbound, Value: []byte("hello")}); err != nil {
		t.Fatal(err)
	}
	stop := consumeInBackground(t, b, Subscription{Group: "g", Topic: events.TopicInbound, Name: "h", Handler: h.handle})
	eventually(t, 30*time.Second, "the output", func() bool {
		return len(topicRecords(t, ctx, addrs[0], events.TopicDelivery)) == 1
	})
	eventually(t, 30*time.Second, "the commit", func() bool {
		sum := int64(0)
		for _, off := range committed(t, ctx, addrs[0], "g", events.TopicInbound, 3) {
			sum += max(off, 0)
		}
		return sum == 1
	})
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if n := h.calls.Load(); n != 3 {
		t.Errorf("handler called %d times, want 3 (two failures, one success)", n)
	}
	if out := topicRecords(t, ctx, addrs[0], events.TopicDelivery); len(out) != 1 || string(out[0].Value) != "hello" {
		t.Errorf("outputs = %v, want one \"hello\"", out)
	}
	if dl := topicRecords(t, ctx, addrs[0], events.TopicDeadLetter); len(dl) != 0 {
		t.Errorf("dead-letter topic holds %d records, want none", len(dl))
	}
}

// TestOutageOutlastsAttemptsByDefault: with the default retry limit (none),
// a dependency down for far more tries than any fixed limit would allow
// (20 failures; the old default gave up after 8) delays the record but does
// not dead-letter it: once the dependency is back the record is handled,
// its output published and its offset committed.
func TestOutageOutlastsAttemptsByDefault(t *testing.T) {
	ctx := ctxTimeout(t, 60*time.Second)
	addrs := startBroker(t)
	cfg := testConfig(addrs)
	cfg.Retry.Attempts = DefaultRetryConfig().Attempts
	cfg.Retry.Max = 10 * time.Millisecond
	if err := cfg.Validate(); err != nil {
		t.Fatalf("the default retry limit does not validate: %v", err)
	}
	b := newBus(t, cfg, Options{})
	const outage = 20
	h := &countingHandler{fn: func(_ context.Context, rec Record, call int64) ([]Message, error) {
		if call <= outage {
			return nil, errors.New("redis: connection refused")
		}
		return []Message{{Topic: events.TopicDelivery, Value: rec.Value}}, nil
	}}
	if err := b.EnsureTopics(ctx, events.TopicInbound, events.TopicDelivery, events.TopicDeadLetter); err != nil {
		t.Fatal(err)
	}
	if err := b.Publish(ctx, Message{Topic: events.TopicInbound, Value: []byte("accepted mail")}); err != nil {
		t.Fatal(err)
	}
	stop := consumeInBackground(t, b, Subscription{Group: "g", Topic: events.TopicInbound, Name: "h", Handler: h.handle})
	eventually(t, 30*time.Second, "the output", func() bool {
		return len(topicRecords(t, ctx, addrs[0], events.TopicDelivery)) == 1
	})
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if n := h.calls.Load(); n != outage+1 {
		t.Errorf("handler called %d times, want %d (the outage, then success)", n, outage+1)
	}
	if dl := topicRecords(t, ctx, addrs[0], events.TopicDeadLetter); len(dl) != 0 {
		t.Errorf("dead-letter topic holds %d records, want none", len(dl))
	}
}

// TestCancelMidRecord: a consumer stopped while its handler runs commits
// nothing, and the next consumer of the group gets the record.
func TestCancelMidRecord(t *testing.T) {
	ctx := ctxTimeout(t, 60*time.Second)
	addrs := startBroker(t)
	b := newBus(t, testConfig(addrs), Options{})
	if err := b.Publish(ctx, Message{Topic: "t", Value: []byte("v")}); err == nil {
		t.Fatal("Publish to a topic that does not exist succeeded")
	}
	if err := b.EnsureTopics(ctx, "t"); err != nil {
		t.Fatal(err)
	}
	if err := b.Publish(ctx, Message{Topic: "t", Value: []byte("v")}); err != nil {
		t.Fatal(err)
	}
	started := make(chan struct{})
	blocking := func(ctx context.Context, _ Record) ([]Message, error) {
		close(started)
		<-ctx.Done()
		return nil, ctx.Err()
	}
	stop := consumeInBackground(t, b, Subscription{Group: "g", Topic: "t", Name: "slow", Handler: blocking})
	select {
	case <-started:
	case <-ctx.Done():
		t.Fatal("handler never called")
	}
	if err := stop(); err != nil {
		t.Fatalf("Consume after cancel = %v, want nil", err)
	}
	for p, off := range committed(t, ctx, addrs[0], "g", "t", 3) {
		if off >= 0 {
			t.Errorf("partition %d committed at %d after a cancelled handler, want nothing committed", p, off)
		}
	}
	got := make(chan string, 1)
	consumeInBackground(t, b, Subscription{Group: "g", Topic: "t", Name: "next", Handler: func(_ context.Context, rec Record) ([]Message, error) {
		select {
		case got <- string(rec.Value):
		default:
		}
		return nil, nil
	}})
	select {
	case v := <-got:
		if v != "v" {
			t.Errorf("redelivered %q, want \"v\"", v)
		}
	case <-ctx.Done():
		t.Fatal("the record was not delivered again")
	}
}

// TestTopicPrefix: logical names map to <prefix>.<name> on the wire, and
// two sites with different prefixes do not see each other's records.
func TestTopicPrefix(t *testing.T) {
	ctx := ctxTimeout(t, 60*time.Second)
	addrs := startBroker(t)
	cfgHQ, cfgBranch := testConfig(addrs), testConfig(addrs)
	cfgHQ.TopicPrefix, cfgBranch.TopicPrefix = "hq", "branch-1"
	hq, branch := newBus(t, cfgHQ, Options{}), newBus(t, cfgBranch, Options{})
	if got := hq.Topic(events.TopicInbound); got != "hq.mail.inbound" {
		t.Errorf("Topic = %q, want hq.mail.inbound", got)
	}
	for _, b := range []*Bus{hq, branch} {
		if err := b.EnsureTopics(ctx, events.TopicInbound); err != nil {
			t.Fatal(err)
		}
	}
	if err := hq.Publish(ctx, Message{Topic: events.TopicInbound, Value: []byte("for hq")}); err != nil {
		t.Fatal(err)
	}
	if got := topicRecords(t, ctx, addrs[0], "hq.mail.inbound"); len(got) != 1 || string(got[0].Value) != "for hq" {
		t.Errorf("hq.mail.inbound holds %v, want the record", got)
	}
	if got := topicRecords(t, ctx, addrs[0], "branch-1.mail.inbound"); len(got) != 0 {
		t.Errorf("branch-1.mail.inbound holds %d records, want none", len(got))
	}

	got := make(chan Record, 1)
	consumeInBackground(t, hq, Subscription{Group: "router", Topic: events.TopicInbound, Name: "route", Handler: func(_ context.Context, rec Record) ([]Message, error) {
		got <- rec
		return nil, nil
	}})
	select {
	case rec := <-got:
		if rec.Topic != events.TopicInbound || rec.WireTopic != "hq.mail.inbound" {
			t.Errorf("record topic %q wire %q, want mail.inbound and hq.mail.inbound", rec.Topic, rec.WireTopic)
		}
	case <-ctx.Done():
		t.Fatal("no record consumed")
	}
}

// TestEnsureTopics: creation with the configured partitions and a
// max.message.bytes that fits the largest record; repeated and concurrent
// calls are harmless; an existing topic is left as it is.
func TestEnsureTopics(t *testing.T) {
	ctx := ctxTimeout(t, 60*time.Second)
	addrs := startBroker(t)
	cfg := testConfig(addrs)
	cfg.Partitions = 4
	b := newBus(t, cfg, Options{})

	client := &kafka.Client{Addr: kafka.TCP(addrs...), Timeout: 10 * time.Second}
	resp, err := client.CreateTopics(ctx, &kafka.CreateTopicsRequest{Topics: []kafka.TopicConfig{{Topic: "mail.status", NumPartitions: 1, ReplicationFactor: 1}}})
	if err != nil || resp.Errors["mail.status"] != nil {
		t.Fatalf("create mail.status: %v %v", err, resp.Errors)
	}

	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for range 4 {
		wg.Go(func() { errs <- b.EnsureTopics(ctx, events.AllTopics...) })
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("concurrent EnsureTopics: %v", err)
		}
	}
	if err := b.EnsureTopics(ctx, events.AllTopics...); err != nil {
		t.Fatalf("EnsureTopics again: %v", err)
	}

	conn, err := kafka.DialContext(ctx, "tcp", addrs[0])
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	for _, topic := range events.AllTopics {
		parts, err := conn.ReadPartitions(topic)
		if err != nil {
			t.Fatalf("%s: %v", topic, err)
		}
		want := 4
		if topic == "mail.status" {
			want = 1 // created before, left alone
		}
		if len(parts) != want {
			t.Errorf("%s has %d partitions, want %d", topic, len(parts), want)
		}
	}
	desc, err := client.DescribeConfigs(ctx, &kafka.DescribeConfigsRequest{Resources: []kafka.DescribeConfigRequestResource{{
		ResourceType: kafka.ResourceTypeTopic, ResourceName: events.TopicInbound, ConfigNames: []string{"max.message.bytes"},
	}}})
	if err != nil {
		t.Fatal(err)
	}
	var maxBytes string
	for _, r := range desc.Resources {
		for _, e := range r.ConfigEntries {
			if e.ConfigName == "max.message.bytes" {
				maxBytes = e.ConfigValue
			}
		}
	}
	if want := strconv.Itoa(cfg.BrokerMaxMessageBytes()); maxBytes != want {
		t.Errorf("max.message.bytes of %s = %q, want %s", events.TopicInbound, maxBytes, want)
	}
}

// TestLargeRecord: a 25 MiB message (the default limit) travels whole
// through Publish, the broker and Consume.
func TestLargeRecord(t *testing.T) {
	ctx := ctxTimeout(t, 90*time.Second)
	addrs := startBroker(t)
	b := newBus(t, testConfig(addrs), Options{})
	if err := b.EnsureTopics(ctx, events.TopicInbound); err != nil {
		t.Fatal(err)
	}
	value := make([]byte, b.Config().MaxRecordBytes)
	for i := range value {
		value[i] = byte(i*7 + i/4096)
	}
	want := sha256.Sum256(value)
	if err := b.Publish(ctx, Message{Topic: events.TopicInbound, Key: []byte("big"), Value: value,
		Headers: []Header{{Key: "x-size", Value: []byte(strconv.Itoa(len(value)))}}}); err != nil {
		t.Fatalf("Publish 25 MiB: %v", err)
	}
	got := make(chan Record, 1)
	consumeInBackground(t, b, Subscription{Group: "g", Topic: events.TopicInbound, Name: "h", Handler: func(_ context.Context, rec Record) ([]Message, error) {
		got <- rec
		return nil, nil
	}})
	select {
	case rec := <-got:
		if len(rec.Value) != len(value) || sha256.Sum256(rec.Value) != want {
			t.Fatalf("consumed %d bytes that differ from the %d published", len(rec.Value), len(value))
		}
		if h, _ := rec.Header("x-size"); h != strconv.Itoa(len(value)) {
			t.Errorf("header x-size = %q", h)
		}
	case <-ctx.Done():
		t.Fatal("the 25 MiB record was not consumed")
	}
}

// TestOversizeRefused: a value above max_record_bytes is refused before
// anything is written, with an error that names the size and the limit.
func TestOversizeRefused(t *testing.T) {
	ctx := ctxTimeout(t, 30*time.Second)
	addrs := startBroker(t)
	cfg := testConfig(addrs)
	cfg.MaxRecordBytes = 1 << 20
	b := newBus(t, cfg, Options{})
	if err := b.EnsureTopics(ctx, events.TopicInbound); err != nil {
		t.Fatal(err)
	}
	ok := Message{Topic: events.TopicInbound, Value: []byte("small")}
	big := Message{Topic: events.TopicInbound, Value: make([]byte, 1<<20+1)}
	err := b.Publish(ctx, ok, big)
	if err == nil {
		t.Fatal("Publish of an oversize value succeeded")
	}
	if !errors.Is(err, ErrTooLarge) || !IsPermanent(err) {
		t.Errorf("error %v: want ErrTooLarge, permanent", err)
	}
	for _, s := range []string{"1048577", "1048576", "mail.inbound", "max_record_bytes"} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error %q does not mention %q", err, s)
		}
	}
	t.Logf("error: %v", err)
	hugeHeaders := Message{Topic: events.TopicInbound, Value: []byte("v"), Headers: []Header{{Key: "x", Value: make([]byte, 1<<20)}}}
	if err := b.Publish(ctx, hugeHeaders); !errors.Is(err, ErrTooLarge) {
		t.Errorf("Publish with 1 MiB of headers: %v, want ErrTooLarge", err)
	}
	if err := b.Publish(ctx, Message{Value: []byte("v")}); err == nil || !IsPermanent(err) {
		t.Errorf("Publish without a topic: %v, want a permanent error", err)
	}
	if got := topicRecords(t, ctx, addrs[0], events.TopicInbound); len(got) != 0 {
		t.Errorf("%d records written, want none (not even the small one)", len(got))
	}
	// The limit itself is fine.
	if err := b.Publish(ctx, Message{Topic: events.TopicInbound, Value: bytes.Repeat([]byte("a"), 1<<20)}); err != nil {
		t.Errorf("Publish of exactly max_record_bytes: %v", err)
	}
}

func TestPing(t *testing.T) {
	ctx := ctxTimeout(t, 30*time.Second)
	addrs := startBroker(t)
	if err := newBus(t, testConfig(addrs), Options{}).Ping(ctx); err != nil {
		t.Fatalf("Ping: %v", err)
	}
	// Nothing listens on the port of a closed listener.
	cfg := testConfig([]string{"127.0.0.1:1"})
	cfg.DialTimeout = time.Second
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := newBus(t, cfg, Options{}).Ping(pctx); err == nil {
		t.Fatal("Ping of a closed port succeeded")
	}
}

func TestNewAndConsumeRefuseBadInput(t *testing.T) {
	if _, err := New(DefaultConfig(), Options{}); err == nil {
		t.Error("New without brokers succeeded")
	}
	cfg := testConfig([]string{"127.0.0.1:9092"})
	cfg.Partitions = 0
	if _, err := New(cfg, Options{}); err == nil {
		t.Error("New with an invalid config succeeded")
	}
	b := newBus(t, testConfig([]string{"127.0.0.1:9092"}), Options{})
	if err := b.Consume(context.Background(), Subscription{Topic: "t", Name: "n", Handler: func(context.Context, Record) ([]Message, error) { return nil, nil }}); err == nil {
		t.Error("Consume without a group succeeded")
	}
}

func TestPermanent(t *testing.T) {
	base := errors.New("bad address")
	if Permanent(nil) != nil {
		t.Error("Permanent(nil) != nil")
	}
	p := Permanent(base)
	if !IsPermanent(p) || !errors.Is(p, base) || p.Error() != "bad address" {
		t.Errorf("Permanent(%v) = %v: IsPermanent %v, Is base %v", base, p, IsPermanent(p), errors.Is(p, base))
	}
	wrapped := errors.Join(errors.New("route"), p)
	if !IsPermanent(wrapped) {
		t.Error("a wrapped permanent error is not permanent")
	}
	if IsPermanent(base) || IsPermanent(nil) {
		t.Error("an unmarked error is permanent")
	}
	if Permanent(p) != p {
		t.Error("Permanent wraps twice")
	}
}

func TestMessageHeaders(t *testing.T) {
	m := Message{Headers: []Header{{Key: "a", Value: []byte("1")}, {Key: "b", Value: []byte("2")}, {Key: "a", Value: []byte("3")}}}
	if v, ok := m.Header("a"); !ok || v != "3" {
		t.Errorf("Header(a) = %q, %v; want the last, 3", v, ok)
	}
	if _, ok := m.Header("A"); ok {
		t.Error("header names are case-sensitive")
	}
	orig := m.Headers
	m.SetHeader("a", "4")
	if v, _ := m.Header("a"); v != "4" || len(m.Headers) != 2 {
		t.Errorf("after SetHeader: %v", m.Headers)
	}
	if string(orig[2].Value) != "3" {
		t.Error("SetHeader modified the original slice")
	}
}

// TestDeadLetterTooLarge: a record larger than this bus carries (written by
// a producer with a higher limit) that fails cannot be copied whole to the
// dead-letter topic; its coordinates are, so an operator can still find it.
func TestDeadLetterTooLarge(t *testing.T) {
	ctx := ctxTimeout(t, 60*time.Second)
	addrs := startBroker(t)
	big := newBus(t, testConfig(addrs), Options{})
	small := testConfig(addrs)
	small.MaxRecordBytes = 1 << 20
	b := newBus(t, small, Options{})
	if err := big.EnsureTopics(ctx, "in", events.TopicDeadLetter); err != nil {
		t.Fatal(err)
	}
	if err := big.Publish(ctx, Message{Topic: "in", Key: []byte("k"), Value: make([]byte, 2<<20)}); err != nil {
		t.Fatal(err)
	}
	consumeInBackground(t, b, Subscription{Group: "g", Topic: "in", Name: "h", Handler: func(context.Context, Record) ([]Message, error) {
		return nil, Permanent(errors.New("cannot route"))
	}})
	eventually(t, 30*time.Second, "a dead letter", func() bool {
		return len(topicRecords(t, ctx, addrs[0], events.TopicDeadLetter)) == 1
	})
	m := topicRecords(t, ctx, addrs[0], events.TopicDeadLetter)[0]
	reason, _ := header(m, events.HeaderDeadLetterReason)
	if len(m.Value) != 0 || !strings.Contains(reason, "cannot route") || !strings.Contains(reason, "value not copied") {
		t.Errorf("dead letter: %d value bytes, reason %q; want no value and a reason that says so", len(m.Value), reason)
	}
	if off, _ := header(m, events.HeaderDeadLetterOffset); off != "0" {
		t.Errorf("offset header %q, want 0", off)
	}
}
