package router

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/postern/postern/api/events"
	"github.com/postern/postern/internal/app"
	"github.com/postern/postern/internal/config"
	"github.com/postern/postern/internal/msgbus"
	"github.com/postern/postern/internal/replica"
	"github.com/postern/postern/internal/sitestate"
	"github.com/postern/postern/internal/testenv"
)

func TestConfigValidateNamesEveryBadKey(t *testing.T) {
	if err := config.Validate(new(DefaultConfig())); err != nil {
		t.Fatalf("the default configuration is refused: %v", err)
	}
	c := DefaultConfig()
	c.UnknownRecipients = "drop"
	c.MaxHops = 0
	c.MessageIDTTL = time.Minute
	c.IdempotencyTTL = 0
	c.ReportingMTA = "mx example"
	c.ConsumerGroup = "a b"
	c.Consumers = 0
	c.Trace.Retention = time.Minute
	c.Trace.MaxRecords = 0
	c.Trace.ConsumerGroup = "x y"
	keys := config.Keys(config.Validate(&c))
	for _, want := range []string{"unknown_recipients", "max_hops", "message_id_ttl", "idempotency_ttl", "reporting_mta", "consumer_group", "consumers",
		"trace.retention", "trace.max_records", "trace.consumer_group"} {
		if !slices.Contains(keys, want) {
			t.Errorf("no error for %s; got %v", want, keys)
		}
	}
	c = DefaultConfig()
	c.UnknownRecipients = UnknownPostmaster
	if keys := config.Keys(config.Validate(&c)); !slices.Equal(keys, []string{"postmaster"}) {
		t.Errorf("postmaster policy without an address: errors for %v, want [postmaster]", keys)
	}
	c.Postmaster = "postmaster@example.com"
	if err := config.Validate(&c); err != nil {
		t.Errorf("postmaster policy with an address: %v", err)
	}
}

// startRuntime starts what `postern serve` starts for the router: the
// embedded broker, the bus, SQLite site state, telemetry.
func startRuntime(t *testing.T) *app.Runtime {
	t.Helper()
	c := app.DefaultCommon()
	c.Site = "hq"
	c.Broker.Listen = "127.0.0.1:0"
	c.Broker.DataDir = filepath.Join(t.TempDir(), "broker")
	c.State.SQLitePath = filepath.Join(t.TempDir(), "state.db")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rt, err := app.Start(ctx, c, app.Options{Name: "router", LogOutput: io.Discard, Needs: Needs})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rt.Close(context.Background()) })
	return rt
}

// TestServiceWaitsForTheDirectoryThenRoutes: a router started before the
// first directory sync routes nothing (it would take every address for an
// outside one); once the replica is synced it routes what waited, and its
// metrics and readiness checks are there.
func TestServiceWaitsForTheDirectoryThenRoutes(t *testing.T) {
	rt := startRuntime(t)
	cfg := DefaultConfig()
	cfg.ReportingMTA = "mx.example.com"
	svc, err := New(cfg, rt)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, c := range svc.Checks() {
		names = append(names, c.Name)
	}
	if !slices.Contains(names, "broker") || !slices.Contains(names, "state") {
		t.Errorf("readiness checks %v, want broker and state", names)
	}

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- svc.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Errorf("Run did not return within 30s of cancel")
		}
	})

	in := events.Inbound{ID: "s1", Site: "hq", MailFrom: "c@customer.net", Recipients: []string{"alice@example.com"},
		Source: events.Source{Kind: events.SourceSMTP, SMTPSession: "x"}, ReceivedAt: time.Now().UTC(),
		Message: []byte("From: c@customer.net\r\nSubject: hi\r\n\r\nhello\r\n")}
	rec, err := in.Encode()
	if err != nil {
		t.Fatal(err)
	}
	if err := rt.Bus.Publish(ctx, msgbus.NewMessage(events.TopicInbound, rec)); err != nil {
		t.Fatal(err)
	}
	// Now the first sync.
	site, _ := json.Marshal(map[string]any{"id": "hq", "name": "hq", "domains": []string{"example.com"}})
	alice, _ := json.Marshal(map[string]any{"id": "u-alice", "username": "alice", "primary_address": "alice@example.com", "site": "hq",
		"enabled": true, "permissions": map[string]bool{"internet_receive": true}})
	err = rt.State.Directory().Apply(ctx, sitestate.ChangeSet{Snapshot: true, Cursor: "1", Put: []sitestate.Entry{
		{Kind: replica.KindSite, ID: "hq", Version: 1, Data: site, Keys: []string{"example.com"}},
		{Kind: replica.KindUser, ID: "u-alice", Version: 1, Data: alice, Keys: []string{"alice", "alice@example.com"}},
	}})
	if err != nil {
		t.Fatal(err)
	}

	got := testenv.Collect(t, rt.Bus, events.TopicDelivery, 1, 45*time.Second)
	if len(got) != 1 {
		t.Fatalf("%d delivery records, want 1", len(got))
	}
	d, err := events.DecodeDelivery(got[0].Event())
	if err != nil || d.ID != "s1:local:u-alice" {
		t.Fatalf("delivery %+v, %v; want s1:local:u-alice (routed with the synced directory)", d, err)
	}

	// Metrics, as Prometheus scrapes them (the record is counted before
	// its delivery is published).
	w := httptest.NewRecorder()
	rt.Telemetry.MetricsHandler().ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	body := w.Body.String()
	for _, want := range []string{`postern_router_messages_total{`, `result="routed"`, `postern_router_route_seconds_bucket{`} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}

// TestServiceParallelConsumers: with consumers: 3 the router runs three
// members of its group, each owning partitions of mail.inbound, and every
// record is routed once, with its delivery id.
func TestServiceParallelConsumers(t *testing.T) {
	const n = 90
	rt := startRuntime(t)
	ctx, cancel := context.WithCancel(context.Background())
	site, _ := json.Marshal(map[string]any{"id": "hq", "name": "hq", "domains": []string{"example.com"}})
	alice, _ := json.Marshal(map[string]any{"id": "u-alice", "username": "alice", "primary_address": "alice@example.com", "site": "hq",
		"enabled": true, "permissions": map[string]bool{"internet_receive": true}})
	err := rt.State.Directory().Apply(ctx, sitestate.ChangeSet{Snapshot: true, Cursor: "1", Put: []sitestate.Entry{
		{Kind: replica.KindSite, ID: "hq", Version: 1, Data: site, Keys: []string{"example.com"}},
		{Kind: replica.KindUser, ID: "u-alice", Version: 1, Data: alice, Keys: []string{"alice", "alice@example.com"}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.ReportingMTA = "mx.example.com"
	if cfg.Consumers != 3 {
		t.Fatalf("default consumers = %d, want 3 (bus.partitions' default)", cfg.Consumers)
	}
	if p := rt.Bus.Config().Partitions; p != 3 {
		t.Fatalf("the bus creates %d partitions per topic, this test needs 3", p)
	}
	svc, err := New(cfg, rt)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- svc.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Errorf("Run did not return within 30s of cancel")
		}
	})

	// The group settles with three members, one partition each.
	c := &kafka.Client{Addr: kafka.TCP(rt.Bus.Config().Brokers...), Timeout: 10 * time.Second}
	wire := rt.Bus.Topic(events.TopicInbound)
	var owners map[string][]int
	deadline := time.Now().Add(45 * time.Second)
	for {
		owners = map[string][]int{}
		resp, err := c.DescribeGroups(ctx, &kafka.DescribeGroupsRequest{GroupIDs: []string{svc.group}})
		if err == nil && len(resp.Groups) == 1 && resp.Groups[0].GroupState == "Stable" {
			for _, m := range resp.Groups[0].Members {
				for _, a := range m.MemberAssignments.Topics {
					if a.Topic == wire {
						owners[m.MemberID] = append(owners[m.MemberID], a.Partitions...)
					}
				}
			}
		}
		if len(owners) == 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the group %s has not settled with 3 members owning partitions of %s in 45s: %v (last error %v)", svc.group, wire, owners, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	for m, ps := range owners {
		if len(ps) != 1 {
			t.Errorf("member %s owns partitions %v, want one", m, ps)
		}
	}

	var msgs []msgbus.Message
	want := map[string]bool{}
	for i := range n {
		id := "p" + strconv.Itoa(i)
		in := events.Inbound{ID: id, Site: "hq", MailFrom: "c@customer.net", Recipients: []string{"alice@example.com"},
			Source: events.Source{Kind: events.SourceSMTP, SMTPSession: "x" + id}, ReceivedAt: time.Now().UTC(),
			Message: []byte("From: c@customer.net\r\nSubject: " + id + "\r\n\r\nhello\r\n")}
		rec, err := in.Encode()
		if err != nil {
			t.Fatal(err)
		}
		msgs = append(msgs, msgbus.NewMessage(events.TopicInbound, rec)) // keyed by id: spread over the partitions
		want[id+":local:u-alice"] = true
	}
	if err := rt.Bus.Publish(ctx, msgs...); err != nil {
		t.Fatal(err)
	}
	got := map[string]int{}
	for _, r := range testenv.Collect(t, rt.Bus, events.TopicDelivery, n, 45*time.Second) {
		d, err := events.DecodeDelivery(r.Event())
		if err != nil {
			t.Fatal(err)
		}
		got[d.ID]++
	}
	for id := range want {
		if got[id] != 1 {
			t.Errorf("delivery %s published %d times, want once", id, got[id])
		}
	}
	if len(got) != len(want) {
		t.Errorf("%d distinct deliveries, want %d", len(got), len(want))
	}
}
