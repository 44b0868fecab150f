package delivery_test

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.opentelemetry.io/otel/metric/noop"

	"github.com/postern/postern/api/events"
	"github.com/postern/postern/internal/sitestate"
	"github.com/postern/postern/internal/telemetry"
	"github.com/postern/postern/services/relay/internal/delivery"
	"github.com/postern/postern/services/relay/internal/smtpout/sinktest"
)

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// startObserved runs a delivery service whose log and metrics the test
// reads; it returns the log and a function reading
// postern_relay_ambiguous_resends_total.
func (e *env) startObserved(cfg delivery.Config) (*lockedBuffer, func() float64) {
	e.t.Helper()
	tel, err := telemetry.Setup(context.Background(), telemetry.DefaultConfig(), telemetry.Resource{ServiceName: "relay", Site: site})
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { _ = tel.Shutdown(context.Background()) })
	log := &lockedBuffer{}
	svc, err := delivery.New(cfg, delivery.Deps{
		Bus: e.bus, Directory: e.state.Directory(), Idempotency: e.state.Idempotency(), Local: e.local, Site: site,
		Logger: slog.New(slog.NewJSONHandler(log, nil)), MeterProvider: tel.MeterProvider(),
	})
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- svc.Run(ctx) }()
	e.t.Cleanup(func() { cancel(); <-done })
	return log, func() float64 {
		mfs, err := tel.Registry().Gather()
		if err != nil {
			e.t.Fatal(err)
		}
		for _, mf := range mfs {
			if mf.GetName() == "postern_relay_ambiguous_resends_total" {
				sum := 0.0
				for _, m := range mf.GetMetric() {
					sum += m.GetCounter().GetValue()
				}
				return sum
			}
		}
		return 0
	}
}

// TestInterruptedAttemptIsReportedAsAmbiguousResend: a relay killed after
// DATA began and before it stored the outcome leaves the recipient's
// attempt marker (and no sent key). The next attempt sends the message —
// the smarthost may now have it twice — and says so: a log line naming the
// message and the recipient, and the counter.
func TestInterruptedAttemptIsReportedAsAmbiguousResend(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	sink := sinktest.Start(t, sinktest.Options{})
	d := outbound("d-amb", "zs@example.com", "c@example.net", "d@example.net")
	// What the killed relay left: the attempt marker of c, not of d.
	if ok, err := e.state.Idempotency().Claim(t.Context(), "attempt:"+d.ID+":c@example.net", time.Hour); !ok || err != nil {
		t.Fatalf("setting the marker: %v, %v", ok, err)
	}
	log, ambiguous := e.startObserved(testConfig(sink.Addr))
	e.publish(d)
	e.final("c@example.net", "d@example.net")
	if n := len(sink.Transactions()); n != 1 {
		t.Errorf("sink has %d messages, want 1", n)
	}
	var lines []string
	for _, l := range strings.Split(log.String(), "\n") {
		if strings.Contains(l, `"msg":"ambiguous resend`) {
			lines = append(lines, l)
		}
	}
	if len(lines) != 1 || !strings.Contains(lines[0], `"recipient":"c@example.net"`) || !strings.Contains(lines[0], `"message_id":"<m1@example.com>"`) {
		t.Errorf("ambiguous resend log lines %q, want one for c@example.net and <m1@example.com>", lines)
	}
	if v := ambiguous(); v != 1 {
		t.Errorf("postern_relay_ambiguous_resends_total = %v, want 1", v)
	}

	// Redelivered once more (Kafka after a crash before the commit): sent
	// before, so neither sent nor reported again.
	e.publish(d)
	e.statuses(func(ss []events.Status) bool { return len(outcomes(ss, "c@example.net")) >= 2 })
	if n := len(sink.Transactions()); n != 1 {
		t.Errorf("sink has %d messages after the redelivery, want 1", n)
	}
	if v := ambiguous(); v != 1 {
		t.Errorf("postern_relay_ambiguous_resends_total = %v after the redelivery, want still 1", v)
	}
}

// TestRefusedAttemptIsNotAmbiguous: a final dot the server answered with
// 451 has a known outcome (the server does not have the message); its
// retry is not an ambiguous resend.
func TestRefusedAttemptIsNotAmbiguous(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	var tries atomic.Int32
	sink := sinktest.Start(t, sinktest.Options{Data: func([]string) error {
		if tries.Add(1) == 1 {
			return sinktest.Reply(451, [3]int{4, 3, 0}, "later")
		}
		return nil
	}})
	log, ambiguous := e.startObserved(testConfig(sink.Addr))
	e.publish(outbound("d-451", "zs@example.com", "c@example.net"))
	ss := e.final("c@example.net")
	if got := outcomes(ss, "c@example.net"); len(got) != 2 || got[0] != events.OutcomeDeferred {
		t.Errorf("outcomes %v, want deferred then delivered", got)
	}
	if strings.Contains(log.String(), "ambiguous resend") || ambiguous() != 0 {
		t.Errorf("the retry after a 451 was reported as an ambiguous resend")
	}
}

// ttlRecorder is an idempotency store that remembers the TTL each key was
// claimed with.
type ttlRecorder struct {
	sitestate.Idempotency
	mu   sync.Mutex
	ttls map[string]time.Duration
}

func (r *ttlRecorder) ClaimAll(ctx context.Context, keys []string, ttl time.Duration) ([]bool, error) {
	r.mu.Lock()
	for _, k := range keys {
		r.ttls[k] = ttl
	}
	r.mu.Unlock()
	return r.Idempotency.ClaimAll(ctx, keys, ttl)
}

func (r *ttlRecorder) ttl(key string) (time.Duration, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	d, ok := r.ttls[key]
	return d, ok
}

// TestAttemptMarkerLivesTheRetryLifetime: the attempt marker must outlive
// every later attempt of its delivery (the retry lifetime, and a lease for
// a redelivery after a kill), but not the idempotency window of the sent
// key that supersedes it: a sent message does not hold two keys per
// recipient for IdempotencyTTL.
func TestAttemptMarkerLivesTheRetryLifetime(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	sink := sinktest.Start(t, sinktest.Options{})
	cfg := testConfig(sink.Addr)
	idem := &ttlRecorder{Idempotency: e.state.Idempotency(), ttls: map[string]time.Duration{}}
	svc, err := delivery.New(cfg, delivery.Deps{
		Bus: e.bus, Directory: e.state.Directory(), Idempotency: idem, Local: e.local, Site: site,
		Logger: slog.New(slog.DiscardHandler), MeterProvider: noop.NewMeterProvider(),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- svc.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	e.publish(outbound("d-ttl", "zs@example.com", "c@example.net"))
	e.final("c@example.net")

	lease := cfg.DialTimeout + 4*cfg.CommandTimeout + cfg.DataTimeout
	if got, ok := idem.ttl("attempt:d-ttl:c@example.net"); !ok || got != cfg.Retry.MaxLifetime+lease {
		t.Errorf("attempt marker TTL %v (set %v), want the retry lifetime plus a lease, %v", got, ok, cfg.Retry.MaxLifetime+lease)
	}
	if got, ok := idem.ttl("sent:d-ttl:c@example.net"); !ok || got != cfg.IdempotencyTTL {
		t.Errorf("sent key TTL %v (set %v), want IdempotencyTTL %v", got, ok, cfg.IdempotencyTTL)
	}
}
