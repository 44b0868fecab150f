package trace

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"unicode/utf8"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"

	"github.com/postern/postern/api/events"
	"github.com/postern/postern/internal/msgbus"
	"github.com/postern/postern/internal/sitestate"
)

// maxReason bounds the reason kept in the index (a remote server's reply
// may be long).
const maxReason = 2000

// Indexer writes every mail.status record into the trace index.
type Indexer struct {
	cfg     Config
	index   sitestate.TraceIndex
	log     *slog.Logger
	records metric.Int64Counter
}

// NewIndexer returns an indexer writing into index with cfg's retention and
// bound; mp receives its metric (nil: none), log its warnings (nil: the
// default logger).
func NewIndexer(cfg Config, index sitestate.TraceIndex, mp metric.MeterProvider, log *slog.Logger) (*Indexer, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if index == nil {
		return nil, errors.New("trace: no trace index")
	}
	if mp == nil {
		mp = noop.NewMeterProvider()
	}
	if log == nil {
		log = slog.Default()
	}
	c, err := recordsCounter(mp)
	if err != nil {
		return nil, fmt.Errorf("trace: metric: %w", err)
	}
	return &Indexer{cfg: cfg, index: index, log: log, records: c}, nil
}

// recordsCounter is the indexer's metric: postern_router_trace_records_total
// in Prometheus, by result.
func recordsCounter(mp metric.MeterProvider) (metric.Int64Counter, error) {
	return mp.Meter("github.com/postern/postern/services/router").Int64Counter("postern.router.trace.records",
		metric.WithUnit("{record}"),
		metric.WithDescription("mail.status records seen by the trace indexer, by result (indexed, duplicate, untraceable)."))
}

// DeclareMetrics creates the indexer's metric instrument on mp, for checks
// of the metric names operators query (see router.DeclareMetrics).
func DeclareMetrics(mp metric.MeterProvider) error {
	_, err := recordsCounter(mp)
	return err
}

// Subscription is the indexer's consumer of mail.status in group.
func (x *Indexer) Subscription(group string) msgbus.Subscription {
	return msgbus.Subscription{Group: group, Topic: events.TopicStatus, Name: "router-trace", Handler: x.Handle}
}

// Handle indexes one mail.status record. It publishes nothing. A record
// that is not a status is dead-lettered (msgbus.Permanent); a state that
// does not answer is a temporary error, retried by the bus.
func (x *Indexer) Handle(ctx context.Context, rec msgbus.Record) ([]msgbus.Message, error) {
	st, err := events.DecodeStatus(rec.Event())
	if err != nil {
		return nil, msgbus.Permanent(fmt.Errorf("trace indexer: %w", err))
	}
	result, err := x.Index(ctx, st)
	if err != nil {
		return nil, err
	}
	x.records.Add(ctx, 1, metric.WithAttributes(attribute.String("result", result)))
	return nil, nil
}

// Index appends st to the lists of its Message-ID and its inbound id and
// says what happened: "indexed", "duplicate" (already there: a record
// consumed again, or published twice) or "untraceable" (neither id can be
// a key; logged).
func (x *Indexer) Index(ctx context.Context, st events.Status) (string, error) {
	var keys []string
	if k, err := InboundKey(st.InboundID); err == nil {
		keys = append(keys, k)
	}
	if st.MessageID != "" {
		if k, _, err := MessageIDKey(st.MessageID); err == nil {
			keys = append(keys, k)
		} else {
			x.log.DebugContext(ctx, "status with a message-id that cannot be traced; indexed by inbound id only",
				slog.String("inbound_id", st.InboundID), slog.Any("error", err))
		}
	}
	if len(keys) == 0 {
		x.log.WarnContext(ctx, "status with neither a traceable inbound id nor message-id; not indexed",
			slog.String("inbound_id", clip(st.InboundID, 100)))
		return "untraceable", nil
	}
	stored := st
	stored.Reason = clip(st.Reason, maxReason)
	data, err := json.Marshal(stored)
	if err != nil {
		return "", msgbus.Permanent(fmt.Errorf("trace indexer: encode status: %w", err))
	}
	added, err := x.index.Append(ctx, keys, sitestate.TraceEntry{ID: EntryID(st), At: st.At, Data: data}, x.cfg.policy())
	switch {
	case errors.Is(err, sitestate.ErrInvalid):
		return "", msgbus.Permanent(fmt.Errorf("trace indexer: status of %s for %s: %w", st.InboundID, st.Recipient, err))
	case err != nil:
		return "", fmt.Errorf("trace indexer: status of %s for %s: %w", st.InboundID, st.Recipient, err)
	case !added:
		return "duplicate", nil
	}
	return "indexed", nil
}

// EntryID identifies a status record by what it says, not by where it sits
// in Kafka, so that the same outcome published twice (a producer that
// crashed between its publish and its commit) is listed once, like one
// consumed twice: the inbound and delivery ids, the stage, the recipient,
// the outcome and the attempt. The time is left out: a republished status
// carries a new one.
func EntryID(st events.Status) string {
	h := sha256.New()
	for _, f := range []string{st.InboundID, st.DeliveryID, st.Stage, strings.ToLower(st.Recipient), st.Outcome, strconv.Itoa(st.Attempt)} {
		h.Write([]byte(strconv.Itoa(len(f))))
		h.Write([]byte{':'})
		h.Write([]byte(f))
	}
	return hex.EncodeToString(h.Sum(nil)[:16])
}

func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
}
