package pipeline

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/postern/postern/api/events"
	"github.com/postern/postern/internal/msgbus"
	"github.com/postern/postern/internal/sitestate"
	"github.com/postern/postern/internal/testenv"
)

// BenchmarkThroughput measures the router end to end on the embedded
// broker and a SQLite site state: b.N mail.inbound records are published
// first (not timed), then one router consumes them — decode, route, check
// and set the idempotency keys, publish the deliveries (acks=all), commit —
// and the time until the last one is handled gives records/s. The
// recipients are mixed: a local user; another site's user and a local one;
// an outbound recipient and a local one from an authenticated user; a
// shared mailbox (manager and staff); a group-like fan-out of three users.
// The site state is SQLite (single box) or Redis (a site deployment;
// POSTERN_TEST_REDIS_ADDR). consumers=1 is one consumer loop;
// consumers=3 is what the router runs by default (router.consumers, one
// per partition of mail.inbound), the time including the group's
// rebalances as the three join.
func BenchmarkThroughput(b *testing.B) {
	for _, state := range []string{"sqlite", "redis"} {
		for _, consumers := range []int{1, 3} {
			for _, size := range []int{4 << 10, 40 << 10} {
				b.Run(fmt.Sprintf("state=%s/consumers=%d/%dKiB", state, consumers, size>>10), func(b *testing.B) {
					benchThroughput(b, state, consumers, size)
				})
			}
		}
	}
}

func benchThroughput(b *testing.B, state string, consumers, size int) {
	ctx := context.Background()
	bus := testenv.Bus(b)
	var st sitestate.Store
	if state == "redis" {
		st = redisStore(b)
	} else {
		st, _ = newStore(b)
	}
	p := newPipeline(b, options(st))
	var msgs []msgbus.Message
	outputs := 0
	for i := range b.N {
		id := "b" + strconv.Itoa(i)
		body := rfc822(size, "From: Customer <c@customer.net>", "To: someone@example.com", "Subject: "+id, "Message-ID: <"+id+"@customer.net>")
		var in events.Inbound
		switch i % 5 {
		case 0:
			in, outputs = inbound(id, "smtp", "c@customer.net", body, "alice@example.com"), outputs+1
		case 1:
			in, outputs = inbound(id, "pop3", "c@customer.net", body, "carol@example.com", "bob@example.com"), outputs+2
		case 2:
			in, outputs = inbound(id, "auth:u-alice", "alice@example.com", body, "x@customer.net", "bob@example.com"), outputs+2
		case 3:
			in, outputs = inbound(id, "smtp", "c@customer.net", body, "sales@example.com"), outputs+2
		case 4:
			in, outputs = inbound(id, "smtp", "c@customer.net", body, "alice@example.com", "bob@example.com", "mia@example.com"), outputs+3
		}
		msgs = append(msgs, inboundMessage(b, in))
	}
	for len(msgs) > 0 {
		n := min(len(msgs), 64)
		if err := bus.Publish(ctx, msgs[:n]...); err != nil {
			b.Fatal(err)
		}
		msgs = msgs[n:]
	}

	// Records handled, each counted once (a rebalance may hand one to two
	// consumers).
	var (
		mu      sync.Mutex
		handled = map[string]bool{}
	)
	done := make(chan struct{})
	sub := p.Subscription("bench")
	sub.AfterPublish = func(ctx context.Context, rec msgbus.Record, published []msgbus.Message) error {
		err := p.AfterPublish(ctx, rec, published)
		if err == nil {
			mu.Lock()
			k := partitionKey(rec) + "/" + strconv.FormatInt(rec.Offset, 10)
			if !handled[k] {
				handled[k] = true
				if len(handled) == b.N {
					close(done)
				}
			}
			mu.Unlock()
		}
		return err
	}
	b.SetBytes(int64(size))
	b.ResetTimer()
	start := time.Now()
	for range consumers {
		consume(b, bus, sub)
	}
	select {
	case <-done:
	case <-time.After(10 * time.Minute):
		mu.Lock()
		defer mu.Unlock()
		b.Fatalf("only %d of %d records handled in 10 minutes", len(handled), b.N)
	}
	elapsed := time.Since(start)
	b.StopTimer()
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "records/s")
	b.ReportMetric(float64(outputs)/float64(b.N), "deliveries/record")
}

// redisStore is a Redis site state with the test directory, under a key
// prefix of its own.
func redisStore(b *testing.B) sitestate.Store {
	ctx := context.Background()
	cfg := sitestate.DefaultConfig().Redis
	cfg.Addr = testenv.RedisAddr(b)
	cfg.KeyPrefix = "postern-router-bench:" + strconv.FormatInt(time.Now().UnixNano(), 36) + ":"
	st, err := sitestate.OpenRedis(ctx, cfg)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		st.Close()
		deleteKeys(b, cfg.Addr, cfg.KeyPrefix)
	})
	if err := st.Directory().Apply(ctx, sitestate.ChangeSet{Snapshot: true, Cursor: "1", Put: testDirectory()}); err != nil {
		b.Fatal(err)
	}
	return st
}

// deleteKeys removes the keys under prefix (the server may be shared: no
// FLUSHDB).
func deleteKeys(b *testing.B, addr, prefix string) {
	c := redis.NewClient(&redis.Options{Addr: addr})
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var keys []string
	iter := c.Scan(ctx, 0, prefix+"*", 1000).Iterator()
	for iter.Next(ctx) {
		keys = append(keys, iter.Val())
	}
	if err := iter.Err(); err != nil {
		b.Errorf("scan keys %s*: %v", prefix, err)
		return
	}
	for chunk := range slices.Chunk(keys, 500) {
		if err := c.Del(ctx, chunk...).Err(); err != nil {
			b.Errorf("delete keys %s*: %v", prefix, err)
		}
	}
}
