package msgbus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/segmentio/kafka-go"
	"go.opentelemetry.io/otel/metric"
)

// lagTimeout bounds one collection of the consumer lag gauge, so that a
// broker that does not answer never holds a Prometheus scrape for long.
const lagTimeout = 5 * time.Second

// lagMaxAge is how long a measured lag is reported again before the broker
// is asked anew. Measuring costs a Metadata, a ListOffsets and an
// OffsetFetch request per consumer group; every reader of the meter
// provider collects (in `postern serve` several metrics endpoints share
// one), and each scrape within this time reuses the last measurement.
const lagMaxAge = 5 * time.Second

// lagWatch remembers every (group, topic) this bus consumed, so that the
// lag gauge keeps reporting a subscription after its consumer stopped (the
// records keep arriving; that is when the lag matters), and the last
// measurement.
type lagWatch struct {
	mu     sync.Mutex
	groups map[string]map[string]bool // group -> logical topics
	failed bool                       // the last collection failed (logged once per streak)

	// measuring is held while the broker is asked (lagTimeout at most),
	// so that collections at the same moment wait for one measurement
	// instead of each making one.
	measuring sync.Mutex
	points    []lagPoint    // the last measurement (under mu)
	at        time.Time     // when it was taken; zero: none to reuse (under mu)
	gen       int           // bumped by every new subscription (under mu)
	maxAge    time.Duration // 0: lagMaxAge; negative: never reuse (tests)
	rounds    int           // measurements made (tests)
}

// lagPoint is one value of the gauge.
type lagPoint struct {
	topic, group string // wire topic name, group
	lag          int64
}

func (w *lagWatch) add(group, topic string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.groups == nil {
		w.groups = map[string]map[string]bool{}
	}
	if w.groups[group] == nil {
		w.groups[group] = map[string]bool{}
	}
	if !w.groups[group][topic] {
		// A new subscription is measured at the next collection.
		w.at = time.Time{}
		w.gen++
	}
	w.groups[group][topic] = true
}

// recent returns the last measurement if it is fresh enough to report again.
func (w *lagWatch) recent() ([]lagPoint, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	maxAge := w.maxAge
	if maxAge == 0 {
		maxAge = lagMaxAge
	}
	if w.at.IsZero() || time.Since(w.at) >= maxAge {
		return nil, false
	}
	return w.points, true
}

// snapshot returns the watched groups and their topics, sorted.
func (w *lagWatch) snapshot() map[string][]string {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := make(map[string][]string, len(w.groups))
	for g, ts := range w.groups {
		out[g] = slices.Sorted(maps.Keys(ts))
	}
	return out
}

// observeLag is the callback of the postern.bus.consumer.lag gauge: for
// every group and topic this bus consumed, the records not yet committed,
// as measured at most lagMaxAge ago. A broker that does not answer leaves
// the gauge without points for the collection (and those within lagMaxAge
// after it), and a warning in the log, never a made-up value.
func (b *Bus) observeLag(ctx context.Context, o metric.Observer) error {
	if b.isClosed() {
		return nil
	}
	for _, p := range b.measureLag(ctx) {
		o.ObserveInt64(b.inst.lag, p.lag, metric.WithAttributes(attrTopic.String(p.topic), attrGroup.String(p.group)))
	}
	return nil
}

// measureLag returns the lag of every watched subscription: the last
// measurement while it is recent, else a new one.
func (b *Bus) measureLag(ctx context.Context) []lagPoint {
	w := &b.lag
	if pts, ok := w.recent(); ok {
		return pts
	}
	w.measuring.Lock()
	defer w.measuring.Unlock()
	if pts, ok := w.recent(); ok {
		return pts // measured while this one waited
	}
	w.mu.Lock()
	gen := w.gen
	w.mu.Unlock()
	subs := w.snapshot()
	if len(subs) == 0 {
		return nil
	}
	w.mu.Lock()
	w.rounds++
	w.mu.Unlock()
	caller := ctx
	ctx, cancel := context.WithTimeout(ctx, min(lagTimeout, b.cfg.RequestTimeout))
	defer cancel()
	var (
		errs []error
		pts  []lagPoint
	)
	for _, group := range slices.Sorted(maps.Keys(subs)) {
		lags, err := b.ConsumerLag(ctx, group, subs[group]...)
		if err != nil {
			errs = append(errs, err)
		}
		for _, topic := range slices.Sorted(maps.Keys(lags)) {
			pts = append(pts, lagPoint{topic: b.Topic(topic), group: group, lag: lags[topic]})
		}
	}
	err := errors.Join(errs...)
	if caller.Err() != nil {
		// The collection was given up (a scrape timed out): what it
		// measured says nothing of the broker, and is not reused.
		return pts
	}
	w.mu.Lock()
	if w.gen == gen { // else it misses a subscription: not reused
		w.points, w.at = pts, time.Now()
	}
	wasFailing := w.failed
	w.failed = err != nil
	w.mu.Unlock()
	switch {
	case err != nil && !wasFailing:
		b.logger.Warn("consumer lag cannot be measured; the lag gauge has no value until the broker answers", slog.Any("error", err))
	case err == nil && wasFailing:
		b.logger.Info("consumer lag measured again")
	}
	return pts
}

// ConsumerLag returns, for each logical topic that exists, how many of its
// records group has not committed yet: the sum over its partitions of the
// high watermark minus the group's committed offset (or minus the first
// offset still in the log, for a partition the group never committed,
// since consumers start from the earliest record). Topics that do not
// exist are left out.
func (b *Bus) ConsumerLag(ctx context.Context, group string, topics ...string) (map[string]int64, error) {
	if group == "" || len(topics) == 0 {
		return nil, errors.New("msgbus: consumer lag: a group and at least one topic are needed")
	}
	wire := make([]string, len(topics))
	logical := make(map[string]string, len(topics))
	for i, t := range topics {
		wire[i] = b.Topic(t)
		logical[wire[i]] = t
	}
	meta, err := b.client.Metadata(ctx, &kafka.MetadataRequest{Topics: wire})
	if err != nil {
		return nil, fmt.Errorf("msgbus: consumer lag of %s: metadata: %w", group, err)
	}
	parts := map[string][]int{}
	offsets := &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{}}
	for _, t := range meta.Topics {
		if t.Error != nil || len(t.Partitions) == 0 || logical[t.Name] == "" {
			continue // not created yet: nothing to lag behind
		}
		for _, p := range t.Partitions {
			parts[t.Name] = append(parts[t.Name], p.ID)
			offsets.Topics[t.Name] = append(offsets.Topics[t.Name], kafka.FirstOffsetOf(p.ID), kafka.LastOffsetOf(p.ID))
		}
	}
	if len(parts) == 0 {
		return map[string]int64{}, nil
	}
	ends, err := b.client.ListOffsets(ctx, offsets)
	if err != nil {
		return nil, fmt.Errorf("msgbus: consumer lag of %s: list offsets: %w", group, err)
	}
	done, err := b.client.OffsetFetch(ctx, &kafka.OffsetFetchRequest{GroupID: group, Topics: parts})
	if err == nil {
		err = done.Error
	}
	if errors.Is(err, kafka.GroupIdNotFound) {
		// A group that never committed (Kafka answers -1 offsets, kfake
		// this error): it has everything still to read.
		done, err = &kafka.OffsetFetchResponse{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("msgbus: consumer lag of %s: offset fetch: %w", group, err)
	}
	out := make(map[string]int64, len(parts))
	var errs []error
	for topic := range parts {
		ok := len(ends.Topics[topic]) == len(parts[topic])
		if !ok {
			errs = append(errs, fmt.Errorf("%s: offsets of %d partitions, not %d", topic, len(ends.Topics[topic]), len(parts[topic])))
		}
		commits := map[int]int64{}
		for _, p := range done.Topics[topic] {
			switch {
			case p.Error == nil:
				commits[p.Partition] = p.CommittedOffset
			case errors.Is(p.Error, kafka.GroupIdNotFound):
				// never committed
			default:
				errs = append(errs, fmt.Errorf("%s/%d: committed offset: %w", topic, p.Partition, p.Error))
				ok = false
			}
		}
		var lag int64
		for _, p := range ends.Topics[topic] {
			if p.Error != nil {
				errs = append(errs, fmt.Errorf("%s/%d: offsets: %w", topic, p.Partition, p.Error))
				ok = false
				continue
			}
			next, has := commits[p.Partition]
			if !has {
				next = -1
			}
			lag += max(p.LastOffset-max(next, p.FirstOffset), 0)
		}
		if ok {
			out[logical[topic]] = lag
		}
	}
	if err := errors.Join(errs...); err != nil {
		return out, fmt.Errorf("msgbus: consumer lag of %s: %w", group, err)
	}
	return out, nil
}
