package msgbus

import (
	"context"
	"crypto/rand"
	"strconv"
	"sync/atomic"
	"testing"
	"time"
)

// The bus's throughput on the embedded broker (one process, loopback TCP,
// data on the local disk without fsync), for a small and a large message:
//
//	go test -run '^$' -bench . -benchtime 20000x ./msgbus/
//
// Publish: batches of records per call, acks=all, synchronous.
// Consume: the real consumer loop (fetch, span, handler, commit each
// record) with a handler that produces nothing.

var benchSizes = []struct {
	name  string
	size  int
	batch int // records per Publish call
}{
	{"4KiB", 4 << 10, 100},
	{"1MiB", 1 << 20, 8},
}

func benchValue(size int) []byte {
	v := make([]byte, size)
	_, _ = rand.Read(v) // incompressible, like most attachments
	return v
}

func BenchmarkPublish(b *testing.B) {
	for _, bs := range benchSizes {
		b.Run(bs.name, func(b *testing.B) {
			ctx := context.Background()
			bus := newBus(b, testConfig(startBroker(b)), Options{})
			if err := bus.EnsureTopics(ctx, "bench"); err != nil {
				b.Fatal(err)
			}
			value := benchValue(bs.size)
			batch := make([]Message, bs.batch)
			for i := range batch {
				batch[i] = Message{Topic: "bench", Key: []byte(strconv.Itoa(i)), Value: value}
			}
			b.SetBytes(int64(bs.size))
			b.ResetTimer()
			for sent := 0; sent < b.N; sent += bs.batch {
				n := min(bs.batch, b.N-sent)
				if err := bus.Publish(ctx, batch[:n]...); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "records/s")
		})
	}
}

func BenchmarkConsume(b *testing.B) {
	for _, bs := range benchSizes {
		b.Run(bs.name, func(b *testing.B) {
			ctx := context.Background()
			bus := newBus(b, testConfig(startBroker(b)), Options{})
			if err := bus.EnsureTopics(ctx, "bench"); err != nil {
				b.Fatal(err)
			}
			value := benchValue(bs.size)
			// One warm-up record, then b.N measured ones.
			total := b.N + 1
			batch := make([]Message, bs.batch)
			for i := range batch {
				batch[i] = Message{Topic: "bench", Key: []byte(strconv.Itoa(i)), Value: value}
			}
			for sent := 0; sent < total; sent += bs.batch {
				if err := bus.Publish(ctx, batch[:min(bs.batch, total-sent)]...); err != nil {
					b.Fatal(err)
				}
			}

			joined, start, done := make(chan struct{}), make(chan struct{}), make(chan struct{})
			var handled atomic.Int64
			handler := func(context.Context, Record) ([]Message, error) {
				switch handled.Add(1) {
				case 1: // the group is joined and the fetches run
					close(joined)
					<-start
				case int64(total):
					close(done)
				}
				return nil, nil
			}
			cctx, cancel := context.WithCancel(ctx)
			result := make(chan error, 1)
			go func() {
				result <- bus.Consume(cctx, Subscription{Group: "bench", Topic: "bench", Name: "noop", Handler: handler})
			}()
			timeout := time.After(10 * time.Minute)
			select {
			case <-joined:
			case <-timeout:
				b.Fatal("consumer did not start")
			}
			b.SetBytes(int64(bs.size))
			b.ResetTimer()
			close(start)
			select {
			case <-done:
			case <-timeout:
				b.Fatalf("consumed %d of %d records", handled.Load(), total)
			}
			b.StopTimer()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "records/s")
			cancel()
			if err := <-result; err != nil {
				b.Fatal(err)
			}
		})
	}
}
