package delivery

import (
	"context"
	"log/slog"
	"strings"
	"time"

	"go.opentelemetry.io/otel/metric"

	"github.com/postern/postern/api/events"
	"github.com/postern/postern/services/relay/internal/smtpout"
)

// attemptKey marks a recipient whose message this relay began to hand to a
// remote server (it is set just before DATA), for markerTTL. The "sent:"
// key supersedes it once the server's 250 is recorded; a failure the
// server answered (4xx, 5xx) removes it. Found on a later attempt of a
// recipient that is not "sent:", it says the earlier attempt ended without
// a known outcome — the relay was killed, or the connection broke, after
// DATA was sent — so the server may hold the message already and this
// attempt may deliver it a second time (the duplicate window of RFC 1047,
// which SMTP cannot close): an ambiguous resend, logged and counted.
//
// One case is reported although it is not ambiguous: the connection
// breaking on the DATA command itself (sending it or reading its 354),
// before any byte of the message left. smtpout reports it like a
// connection lost during the message (Code 0, status 4.4.2) and has no
// hook after the 354, so the marker cannot be told apart from one left
// after the message was sent; it stays, and the retry is counted as an
// ambiguous resend. The report errs on the side of a duplicate that did
// not happen, never of one that did.
func attemptKey(id, rcpt string) string { return "attempt:" + id + ":" + strings.ToLower(rcpt) }

// markerTTL is how long an attempt marker lives. It is read only by a
// later attempt of the same delivery and recipient that finds no sent key:
// a retry, due no later than the end of the retry lifetime (the first
// attempt plus Retry.MaxLifetime, and the marker is set at or after the
// first attempt), or the redelivery of a record whose consumer was killed
// during that last attempt, deferred by its sending lease (leaseTTL) at
// most. A shorter life (a lease's) would lose the report of a relay killed
// during DATA: the redelivered record is deferred behind the lease, and
// retried after it expired. Once the sent key is stored the marker is dead
// weight, so it does not live the sent key's IdempotencyTTL: a successful
// send holds two keys per recipient for the retry lifetime only, not for
// the whole idempotency window (forgetting it after the 250 would cost a
// state write per recipient on every send).
func (s *Service) markerTTL() time.Duration {
	return min(s.cfg.IdempotencyTTL, s.cfg.Retry.MaxLifetime+s.leaseTTL())
}

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
	claimed, err := s.deps.Idempotency.ClaimAll(context.WithoutCancel(tx.ctx), keys, s.markerTTL())
	if err != nil {
		s.log.WarnContext(tx.ctx, "recording a delivery attempt failed; not sending", slog.String("delivery_id", d.ID), slog.Any("error", err))
		return err
	}
	msgID, parsed := "", false // the header is read only for a report
	for i, r := range rcpts {
		tx.marked[strings.ToLower(r)] = true
		if claimed[i] {
			continue
		}
		if !parsed {
			msgID, parsed = messageID(d.Message), true
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
