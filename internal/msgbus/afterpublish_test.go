package msgbus

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/postern/postern/api/events"
)

// TestAfterPublish: Subscription.AfterPublish runs once a record's outputs
// are on the broker and before the record is committed, with the messages
// the handler returned; its temporary errors are retried without running
// the handler or publishing again; a permanent error dead-letters the
// record (whose outputs stay published); it never runs for a record the
// handler failed.
func TestAfterPublish(t *testing.T) {
	ctx := ctxTimeout(t, 60*time.Second)
	addrs := startBroker(t)
	cfg := testConfig(addrs)
	b := newBus(t, cfg, Options{})
	const group, in, out = "router", events.TopicInbound, events.TopicDelivery
	if err := b.EnsureTopics(ctx, in, out, events.TopicDeadLetter); err != nil {
		t.Fatal(err)
	}

	var (
		mu          sync.Mutex
		handled     = map[string]int{}
		after       = map[string]int{}
		published   = map[string][]string{} // value → values of the published messages AfterPublish was given
		seenOut     = map[string]int{}      // value → outputs on the broker when AfterPublish first ran
		committedAt = map[string]int64{}    // value → committed offsets (sum) when AfterPublish first ran
	)
	handler := func(_ context.Context, rec Record) ([]Message, error) {
		mu.Lock()
		handled[string(rec.Value)]++
		mu.Unlock()
		switch v := string(rec.Value); v {
		case "handler-fails":
			return nil, Permanent(errors.New("parse envelope: no recipients"))
		case "nothing":
			return nil, nil
		default:
			return []Message{
				{Topic: out, Key: rec.Key, Value: []byte(v + "/1")},
				{Topic: out, Key: rec.Key, Value: []byte(v + "/2")},
			}, nil
		}
	}
	afterPublish := func(_ context.Context, rec Record, msgs []Message) error {
		v := string(rec.Value)
		mu.Lock()
		after[v]++
		n := after[v]
		mu.Unlock()
		if n == 1 {
			outs := 0
			for _, m := range topicRecords(t, ctx, addrs[0], b.Topic(out)) {
				if strings.HasPrefix(string(m.Value), v+"/") {
					outs++
				}
			}
			sum := int64(0)
			for _, off := range committed(t, ctx, addrs[0], group, b.Topic(in), cfg.Partitions) {
				sum += max(off, 0)
			}
			var vals []string
			for _, m := range msgs {
				vals = append(vals, string(m.Value))
			}
			mu.Lock()
			seenOut[v], committedAt[v], published[v] = outs, sum, vals
			mu.Unlock()
		}
		switch {
		case v == "flaky" && n < 3:
			return errors.New("redis: connection reset")
		case v == "broken":
			return Permanent(errors.New("index: invalid key"))
		}
		return nil
	}
	// One key: one partition, handled in this order.
	values := []string{"ok", "flaky", "nothing", "handler-fails", "broken", "last"}
	for _, v := range values {
		if err := b.Publish(ctx, Message{Topic: in, Key: []byte("k"), Value: []byte(v)}); err != nil {
			t.Fatal(err)
		}
	}
	stop := consumeInBackground(t, b, Subscription{Group: group, Topic: in, Name: "route", Handler: handler, AfterPublish: afterPublish})
	eventually(t, 30*time.Second, "every offset committed", func() bool {
		sum := int64(0)
		for _, off := range committed(t, ctx, addrs[0], group, b.Topic(in), cfg.Partitions) {
			sum += max(off, 0)
		}
		return sum == int64(len(values))
	})
	if err := stop(); err != nil {
		t.Fatalf("Consume: %v", err)
	}

	mu.Lock()
	defer mu.Unlock()
	for i, v := range values {
		wantHandled, wantAfter, wantOuts := 1, 1, 2
		switch v {
		case "flaky":
			wantAfter = 3
		case "nothing":
			wantOuts = 0
		case "handler-fails":
			wantAfter, wantOuts = 0, 0
		}
		if handled[v] != wantHandled {
			t.Errorf("%s: handler ran %d times, want %d", v, handled[v], wantHandled)
		}
		if after[v] != wantAfter {
			t.Errorf("%s: AfterPublish ran %d times, want %d", v, after[v], wantAfter)
		}
		if wantAfter == 0 {
			continue
		}
		if seenOut[v] != wantOuts || len(published[v]) != wantOuts {
			t.Errorf("%s: when AfterPublish ran, %d outputs were on the broker and it was given %v; want %d", v, seenOut[v], published[v], wantOuts)
		}
		if committedAt[v] != int64(i) {
			t.Errorf("%s (offset %d): AfterPublish ran with %d records committed, want %d (not this one)", v, i, committedAt[v], i)
		}
	}
	outs := map[string]int{}
	for _, m := range topicRecords(t, ctx, addrs[0], b.Topic(out)) {
		outs[string(m.Value)]++
	}
	for _, v := range []string{"ok/1", "ok/2", "flaky/1", "flaky/2", "broken/1", "broken/2", "last/1", "last/2"} {
		if outs[v] != 1 {
			t.Errorf("output %s published %d times, want once", v, outs[v])
		}
	}
	dead := topicRecords(t, ctx, addrs[0], b.Topic(events.TopicDeadLetter))
	reasons := map[string]string{}
	for _, m := range dead {
		reasons[string(m.Value)], _ = header(m, events.HeaderDeadLetterReason)
	}
	if len(dead) != 2 || reasons["handler-fails"] == "" {
		t.Fatalf("dead letters = %v, want handler-fails and broken", reasons)
	}
	if r := reasons["broken"]; !strings.Contains(r, "index: invalid key") || !strings.Contains(r, "they are published") {
		t.Errorf("broken: dead-letter reason %q, want the AfterPublish error and that the outputs are published", r)
	}
}

// TestAfterPublishFinishesOnStop: a stop (the consumer's context
// cancelled) while AfterPublish runs does not cut it short — its outputs
// are on the broker, so the step completes and the record is committed
// rather than delivered (and its outputs published) again.
func TestAfterPublishFinishesOnStop(t *testing.T) {
	ctx := ctxTimeout(t, 60*time.Second)
	addrs := startBroker(t)
	cfg := testConfig(addrs)
	cfg.Partitions = 1
	b := newBus(t, cfg, Options{})
	const group, in, out = "router", events.TopicInbound, events.TopicDelivery
	if err := b.EnsureTopics(ctx, in, out, events.TopicDeadLetter); err != nil {
		t.Fatal(err)
	}
	if err := b.Publish(ctx, Message{Topic: in, Key: []byte("k"), Value: []byte("v")}); err != nil {
		t.Fatal(err)
	}
	cctx, stop := context.WithCancel(ctx)
	hookErr := make(chan error, 1)
	done := make(chan error, 1)
	go func() {
		done <- b.Consume(cctx, Subscription{Group: group, Topic: in, Name: "t",
			Handler: func(context.Context, Record) ([]Message, error) {
				return []Message{{Topic: out, Key: []byte("k"), Value: []byte("out")}}, nil
			},
			AfterPublish: func(actx context.Context, _ Record, _ []Message) error {
				stop() // the process is told to stop right now
				time.Sleep(100 * time.Millisecond)
				hookErr <- actx.Err()
				return actx.Err()
			},
		})
	}()
	select {
	case err := <-hookErr:
		if err != nil {
			t.Fatalf("AfterPublish's context was cancelled by the stop: %v", err)
		}
	case <-ctx.Done():
		t.Fatal("AfterPublish never ran")
	}
	<-done
	if off := committed(t, ctx, addrs[0], group, b.Topic(in), 1); off[0] != 1 {
		t.Errorf("committed offset %v after a stop during AfterPublish, want 1 (the record is done)", off)
	}
}
