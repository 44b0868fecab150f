package delivery

import (
	"context"
	"log/slog"
	"strings"

	"go.opentelemetry.io/otel/metric"

	"github.com/postern/postern/api/events"
	"github.com/postern/postern/services/relay/internal/smtpout"
)

// attemptKey marks a recipient whose message this relay began to hand to a
// remote server (it is set just before DATA) for as long as the relay
// remembers sent messages. The "sent:" key supersedes it once the server's
// 250 is recorded; a failure the server answered (4xx, 5xx) removes it.
// Found on a later attempt of a recipient that is not "sent:", it says the
// earlier attempt ended without a known outcome — the relay was killed, or
// the connection broke, after DATA began — so the server may hold the
// message already and this attempt may deliver it a second time (the
// duplicate window of RFC 1047, which SMTP cannot close): an ambiguous
// resend, logged and counted.
func attemptKey(id, rcpt string) string { return "attempt:" + id + ":" + strings.ToLower(rcpt) }

// newAmbiguousCounter is postern.relay.ambiguous_resends (Prometheus:
// postern_relay_ambiguous_resends_total{destination}).
func newAmbiguousCounter(mp metric.MeterProvider) (metric.Int64Counter, error) {
	return mp.Meter(instrumentationName).Int64Counter("postern.relay.ambiguous_resends",
		metric.WithUnit("{recipient}"),
		metric.WithDescription("Recipients sent again over SMTP after an earlier attempt ended without a known outcome after DATA began (the relay was killed or the connection broke before the reply was recorded): the remote server may receive the message twice (RFC 1047)."))
}

// transaction is one SMTP transaction of a delivery record, with the hooks
// that record its attempt markers before DATA and its sent keys right
// after the server's 250.
type transaction struct {
	s      *Service
	ctx    context.Context
	d      events.Delivery
	remote string

	marked map[string]bool // lower-case recipient → attempt marker set (or found) by this transaction
}

func (s *Service) newTransaction(ctx context.Context, d events.Delivery, remote string) *transaction {
	return &transaction{s: s, ctx: ctx, d: d, remote: remote, marked: map[string]bool{}}
}

func (tx *transaction) hooks() smtpout.Hooks {
	return smtpout.Hooks{BeforeData: tx.beforeData, Accepted: tx.accepted}
}

// beforeData sets the attempt markers of the recipients about to be sent;
// one already set is an ambiguous resend. A failure to store them stops
// the transaction before DATA.
func (tx *transaction) beforeData(rcpts []string) error {
	s, d := tx.s, tx.d
	keys := make([]string, len(rcpts))
	for i, r := range rcpts {
		keys[i] = attemptKey(d.ID, r)
	}
	claimed, err := s.deps.Idempotency.ClaimAll(context.WithoutCancel(tx.ctx), keys, s.cfg.IdempotencyTTL)
	if err != nil {
		s.log.WarnContext(tx.ctx, "recording a delivery attempt failed; not sending", slog.String("delivery_id", d.ID), slog.Any("error", err))
		return err
	}
	msgID := messageID(d.Message)
	for i, r := range rcpts {
		tx.marked[strings.ToLower(r)] = true
		if claimed[i] {
			continue
		}
		s.ambiguous.Add(tx.ctx, 1, metric.WithAttributes(attrDestination.String(d.Destination)))
		s.log.WarnContext(tx.ctx, "ambiguous resend: an earlier attempt ended without a known outcome after DATA began (relay killed or connection lost before the reply was recorded); the remote server may receive this message twice",
			slog.String("delivery_id", d.ID), slog.String("message_id", msgID), slog.String("recipient", r),
			slog.String("remote", tx.remote), slog.String("destination", d.Destination))
	}
	return nil
}

// accepted stores the sent keys of the recipients the server answered 250
// for, at once: a crash between the 250 and this write is the window in
// which a message can still be sent twice.
func (tx *transaction) accepted(rcpts []string) {
	s, d := tx.s, tx.d
	keys := make([]string, len(rcpts))
	for i, r := range rcpts {
		keys[i] = sentKey(d.ID, r)
	}
	if _, err := s.deps.Idempotency.ClaimAll(context.WithoutCancel(tx.ctx), keys, s.cfg.IdempotencyTTL); err != nil {
		s.log.ErrorContext(tx.ctx, "recording sent messages failed; a redelivered record would send them again",
			slog.String("delivery_id", d.ID), slog.Any("error", err))
	}
}

// finish releases what a failed recipient holds: its sending lease, so
// that the next attempt need not wait for it to expire, and its attempt
// marker when the server answered (the outcome is known: it does not have
// the message). A recipient whose transaction broke without an answer
// after DATA began keeps its marker, so its next attempt is reported as an
// ambiguous resend.
func (tx *transaction) finish(failed []smtpout.Result) {
	s, d := tx.s, tx.d
	bg := context.WithoutCancel(tx.ctx)
	for _, r := range failed {
		if err := s.deps.Idempotency.Forget(bg, leaseKey(d.ID, r.Recipient)); err != nil {
			s.log.WarnContext(tx.ctx, "releasing a sending lease failed; the next attempt waits for it to expire", slog.String("delivery_id", d.ID), slog.Any("error", err))
		}
		if r.Code == 0 || !tx.marked[strings.ToLower(r.Recipient)] {
			continue
		}
		if err := s.deps.Idempotency.Forget(bg, attemptKey(d.ID, r.Recipient)); err != nil {
			s.log.WarnContext(tx.ctx, "releasing an attempt marker failed; the next attempt will be reported as an ambiguous resend", slog.String("delivery_id", d.ID), slog.Any("error", err))
		}
	}
}
