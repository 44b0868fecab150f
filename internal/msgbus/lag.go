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

// lagWatch remembers every (group, topic) this bus consumed, so that the
// lag gauge keeps reporting a subscription after its consumer stopped (the
// records keep arriving; that is when the lag matters).
type lagWatch struct {
	mu     sync.Mutex
	groups map[string]map[string]bool // group -> logical topics
	failed bool                       // the last collection failed (logged once per streak)
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
	w.groups[group][topic] = true
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
// every group and topic this bus consumed, the records not yet committed.
// A broker that does not answer leaves the gauge without points for the
// collection (and a warning in the log), never a stale or made-up value.
func (b *Bus) observeLag(ctx context.Context, o metric.Observer) error {
	subs := b.lag.snapshot()
	if len(subs) == 0 || b.isClosed() {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, min(lagTimeout, b.cfg.RequestTimeout))
	defer cancel()
	var errs []error
	for _, group := range slices.Sorted(maps.Keys(subs)) {
		lags, err := b.ConsumerLag(ctx, group, subs[group]...)
		if err != nil {
			errs = append(errs, err)
		}
		for topic, n := range lags {
			o.ObserveInt64(b.inst.lag, n, metric.WithAttributes(attrTopic.String(b.Topic(topic)), attrGroup.String(group)))
		}
	}
	err := errors.Join(errs...)
	b.lag.mu.Lock()
	wasFailing := b.lag.failed
	b.lag.failed = err != nil
	b.lag.mu.Unlock()
	switch {
	case err != nil && !wasFailing:
		b.logger.Warn("consumer lag cannot be measured; the lag gauge has no value until the broker answers", slog.Any("error", err))
	case err == nil && wasFailing:
		b.logger.Info("consumer lag measured again")
	}
	return nil
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
