package harness

import (
	"context"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/postern/postern/api/events"
)

// ReadTopic reads every record of topic (every partition, from the first
// offset to the end) from the broker at addr, without a consumer group.
// A topic the broker does not have fails the test: an empty answer means
// an empty topic, never a wrong name.
func ReadTopic(t testing.TB, addr, topic string) []events.Record {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	client := &kafka.Client{Addr: kafka.TCP(addr)}
	meta, err := client.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{topic}})
	if err != nil || len(meta.Topics) != 1 {
		t.Fatalf("harness: metadata of %s: %v", topic, err)
	}
	if err := meta.Topics[0].Error; err != nil || len(meta.Topics[0].Partitions) == 0 {
		t.Fatalf("harness: topic %s at %s: %v (%d partitions)", topic, addr, err, len(meta.Topics[0].Partitions))
	}
	var reqs []kafka.OffsetRequest
	for _, p := range meta.Topics[0].Partitions {
		reqs = append(reqs, kafka.FirstOffsetOf(p.ID), kafka.LastOffsetOf(p.ID))
	}
	offs, err := client.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{topic: reqs}})
	if err != nil {
		t.Fatalf("harness: offsets of %s: %v", topic, err)
	}
	var out []events.Record
	for _, po := range offs.Topics[topic] {
		if po.Error != nil {
			t.Fatalf("harness: offsets of %s partition %d: %v", topic, po.Partition, po.Error)
		}
		if po.LastOffset <= po.FirstOffset {
			continue
		}
		r := kafka.NewReader(kafka.ReaderConfig{Brokers: []string{addr}, Topic: topic, Partition: po.Partition, MaxBytes: 32 << 20, MaxWait: 200 * time.Millisecond})
		if err := r.SetOffset(po.FirstOffset); err != nil {
			r.Close()
			t.Fatalf("harness: %v", err)
		}
		for {
			m, err := r.ReadMessage(ctx)
			if err != nil {
				r.Close()
				t.Fatalf("harness: reading %s partition %d: %v", topic, po.Partition, err)
			}
			rec := events.Record{Key: m.Key, Value: m.Value}
			for _, h := range m.Headers {
				rec.Headers = append(rec.Headers, events.Header{Key: h.Key, Value: h.Value})
			}
			out = append(out, rec)
			if m.Offset >= po.LastOffset-1 {
				break
			}
		}
		r.Close()
	}
	return out
}
