package msgbus

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"runtime/debug"
	"strconv"
	"sync"
	"time"

	"github.com/segmentio/kafka-go"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	semconv "go.opentelemetry.io/otel/semconv/v1.40.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/postern/postern/api/events"
)

// Handler processes one record and returns the messages it produces. The
// bus publishes them (acks=all) before it commits the record, so a handler
// must not publish its outputs itself. A handler is called again for the
// same record after a temporary error, after a crash and after a
// rebalance: it must be idempotent.
//
// An error is temporary unless marked with Permanent; a panic counts as a
// permanent error. ctx carries the trace of the producer of rec and is
// cancelled when the consumer stops.
type Handler func(ctx context.Context, rec Record) ([]Message, error)

// Subscription says what a consumer reads and who handles it.
type Subscription struct {
	// Group is the Kafka consumer group: the consumers of one group share
	// the topic's partitions, each record goes to one of them.
	Group string
	// Topic is the logical topic to read (the bus adds the site prefix).
	Topic string
	// Name names the handler in dead-letter headers, logs and metrics.
	Name    string
	Handler Handler
	// AfterPublish, when set, runs once the handler's messages for rec
	// (published, as the handler returned them; none is fine) were
	// acknowledged by the broker, and before rec's offset is committed:
	// the place to record "this record's outputs are out" (idempotency
	// keys, an index) without ever recording it for outputs that were
	// not published. It is not called for a record that is dead-lettered.
	//
	// An error is retried like a temporary handler error, with the same
	// backoff and attempts, but only AfterPublish runs again (the handler
	// is not called and nothing is published again). A permanent error
	// or exhausted attempts dead-letter rec, with a reason saying that
	// its outputs were published. A process that dies after the publish
	// and before AfterPublish returned has not committed rec: it is
	// delivered again and the handler runs again, so AfterPublish must
	// not be the only guard against doubles. Optional.
	AfterPublish func(ctx context.Context, rec Record, published []Message) error
}

// testHookBeforeCommit, set only by tests, runs after a record's outputs
// (or its dead letter) were acknowledged and before its offset is
// committed.
var testHookBeforeCommit func(Record)

// readerQueue is how many fetched records a consumer holds ahead of its
// handler. With 25 MiB records it bounds the memory a subscription takes.
const readerQueue = 16

// reasonLimit bounds the dead-letter reason header.
const reasonLimit = 4 << 10

// Consume reads s.Topic as a member of s.Group and calls s.Handler for each
// record, until ctx is cancelled (it then returns nil) or a fatal error.
// It first creates the topic and the dead-letter topic if they are missing.
//
// For each record, in order: the handler runs with a context continuing
// the record's trace; a temporary error is retried with capped exponential
// backoff (Config.Retry); on success the handler's messages are published
// (acks=all, retried like a temporary error) and then s.AfterPublish, if
// set, runs (retried the same way); a permanent error, a panic,
// or exhausted retries send the original record, with the dead-letter
// headers added, to the dead-letter topic (acks=all). Only then is the
// record's offset committed. If ctx is cancelled before that, nothing is
// committed and the record is delivered again.
func (b *Bus) Consume(ctx context.Context, s Subscription) error {
	if s.Group == "" || s.Topic == "" || s.Name == "" || s.Handler == nil {
		return errors.New("msgbus: consume: a subscription needs a group, a topic, a name and a handler")
	}
	if b.isClosed() {
		return errors.New("msgbus: consume: bus closed")
	}
	if err := b.EnsureTopics(ctx, s.Topic, events.TopicDeadLetter); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	b.lag.add(s.Group, s.Topic)
	wire := b.Topic(s.Topic)
	logger := b.logger.With(slog.String("topic", wire), slog.String("group", s.Group), slog.String("handler", s.Name))
	r := kafka.NewReader(kafka.ReaderConfig{
		Brokers:           b.cfg.Brokers,
		GroupID:           s.Group,
		Topic:             wire,
		Dialer:            b.dialer,
		QueueCapacity:     readerQueue,
		MinBytes:          1,
		MaxBytes:          b.cfg.fetchMaxBytes(),
		MaxWait:           b.cfg.FetchMaxWait,
		ReadBatchTimeout:  b.cfg.RequestTimeout,
		HeartbeatInterval: b.cfg.HeartbeatInterval,
		// Explicit, synchronous commits only: CommitMessages returns
		// once the coordinator stored the offset.
		CommitInterval:        0,
		SessionTimeout:        b.cfg.SessionTimeout,
		RebalanceTimeout:      b.cfg.RebalanceTimeout,
		JoinGroupBackoff:      time.Second,
		WatchPartitionChanges: true,
		StartOffset:           kafka.FirstOffset,
		Logger:                kafkaLogger{logger, slog.LevelDebug - 4},
		ErrorLogger:           kafkaLogger{logger, slog.LevelWarn},
	})
	defer func() {
		if err := r.Close(); err != nil {
			logger.Warn("closing consumer", slog.Any("error", err))
		}
	}()
	c := &consumer{
		bus:    b,
		sub:    s,
		reader: r,
		wire:   wire,
		logger: logger,
		attrs: metric.WithAttributes(
			attrTopic.String(wire), attrGroup.String(s.Group), attrHandler.String(s.Name)),
	}
	logger.Info("consumer started")
	defer logger.Info("consumer stopped")

	for failures := 0; ; {
		m, err := r.FetchMessage(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrClosedPipe) {
				return fmt.Errorf("msgbus: consume %s: reader closed: %w", wire, err)
			}
			// kafka-go keeps retrying behind FetchMessage; it reports
			// errors so that we can tell. Keep going.
			failures++
			d := b.cfg.Retry.Backoff(failures)
			logger.Warn("fetching records failed; retrying", slog.Any("error", err), slog.Int("failures", failures), slog.Duration("retry_in", d))
			if !sleep(ctx, d) {
				return nil
			}
			continue
		}
		failures = 0
		if err := c.handle(ctx, m); err != nil {
			if ctx.Err() != nil {
				return nil // not committed: delivered again
			}
			return err
		}
	}
}

type consumer struct {
	bus    *Bus
	sub    Subscription
	reader *kafka.Reader
	wire   string
	logger *slog.Logger
	attrs  metric.MeasurementOption
}

// handle takes one record from fetch to commit. It returns an error only
// when ctx was cancelled before the record was done.
func (c *consumer) handle(ctx context.Context, m kafka.Message) error {
	start := time.Now()
	b := c.bus
	rec := Record{
		Message: Message{
			Topic:   c.sub.Topic,
			Key:     m.Key,
			Value:   m.Value,
			Headers: fromKafkaHeaders(m.Headers),
		},
		WireTopic: m.Topic,
		Partition: m.Partition,
		Offset:    m.Offset,
		Time:      m.Time,
	}
	pctx := b.prop.extract(ctx, rec.Headers)
	hctx, span := b.tracer.Start(pctx, "process "+m.Topic,
		trace.WithSpanKind(trace.SpanKindConsumer),
		trace.WithAttributes(
			semconv.MessagingSystemKafka,
			semconv.MessagingOperationTypeProcess,
			semconv.MessagingOperationName("process"),
			semconv.MessagingDestinationName(m.Topic),
			semconv.MessagingConsumerGroupName(c.sub.Group),
			semconv.MessagingDestinationPartitionID(strconv.Itoa(m.Partition)),
			semconv.MessagingKafkaOffset(int(m.Offset)),
			semconv.MessagingMessageBodySize(len(m.Value)),
			attrHandler.String(c.sub.Name),
		))
	defer span.End()
	if len(m.Key) > 0 {
		span.SetAttributes(semconv.MessagingKafkaMessageKey(string(m.Key)))
	}
	logger := c.logger.With(slog.Int("partition", m.Partition), slog.Int64("offset", m.Offset))

	outcome, err := c.process(hctx, rec, logger)
	if err != nil {
		span.SetStatus(codes.Error, "consumer stopped before the record was done")
		return err
	}

	if hook := testHookBeforeCommit; hook != nil {
		hook(rec)
	}
	// What the record produced is acknowledged: commit even if ctx is
	// being cancelled right now, so that a clean shutdown redelivers as
	// little as possible.
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), b.cfg.RequestTimeout)
	defer cancel()
	if err := c.reader.CommitMessages(cctx, m); err != nil {
		// Nothing is lost: the record comes again (and a later commit on
		// the partition covers it).
		logger.ErrorContext(hctx, "committing offset failed; the record will be delivered again", slog.Any("error", err))
		span.RecordError(err)
	}
	b.inst.consumed.Add(ctx, 1, c.attrs, metric.WithAttributes(attrOutcome.String(outcome)))
	b.inst.handleDuration.Record(ctx, time.Since(start).Seconds(), c.attrs, metric.WithAttributes(attrOutcome.String(outcome)))
	return nil
}

// process runs the handler with retries and publishes its outputs, or
// dead-letters the record. It returns the outcome, or ctx's error if ctx
// was cancelled first.
func (c *consumer) process(ctx context.Context, rec Record, logger *slog.Logger) (string, error) {
	retry := c.bus.cfg.Retry
	span := trace.SpanFromContext(ctx)

	var outs []Message
	for attempt := 1; ; attempt++ {
		var err error
		outs, err = c.call(ctx, rec)
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			return "", ctx.Err()
		}
		if IsPermanent(err) || retry.exhausted(attempt) {
			return outcomeDeadLetter, c.deadLetter(ctx, rec, err, attempt, logger)
		}
		c.retrying(ctx, logger, span, "handler failed; retrying", err, attempt)
		if !sleep(ctx, retry.Backoff(attempt)) {
			return "", ctx.Err()
		}
	}

	if len(outs) == 0 {
		return c.afterPublish(ctx, rec, outs, logger)
	}
	// The handler is done; publish its outputs (the same ones: the
	// handler is not run again) until they are acknowledged.
	for attempt := 1; ; attempt++ {
		err := c.bus.Publish(ctx, outs...)
		if err == nil {
			return c.afterPublish(ctx, rec, outs, logger)
		}
		if ctx.Err() != nil {
			return "", ctx.Err()
		}
		err = fmt.Errorf("publishing the handler's %d messages: %w", len(outs), err)
		if IsPermanent(err) || retry.exhausted(attempt) {
			return outcomeDeadLetter, c.deadLetter(ctx, rec, err, attempt, logger)
		}
		c.retrying(ctx, logger, span, "publishing outputs failed; retrying", err, attempt)
		if !sleep(ctx, retry.Backoff(attempt)) {
			return "", ctx.Err()
		}
	}
}

// afterPublish runs the subscription's AfterPublish, if any, with
// retries; outs are acknowledged already.
func (c *consumer) afterPublish(ctx context.Context, rec Record, outs []Message, logger *slog.Logger) (string, error) {
	if c.sub.AfterPublish == nil {
		return outcomeOK, nil
	}
	retry := c.bus.cfg.Retry
	span := trace.SpanFromContext(ctx)
	for attempt := 1; ; attempt++ {
		// The outputs are on the broker: finish the step even if ctx is
		// being cancelled right now (as the commit does), or a clean
		// shutdown would have the record, and its outputs, come again.
		actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.bus.cfg.RequestTimeout)
		err := c.callAfterPublish(actx, rec, outs)
		cancel()
		if err == nil {
			return outcomeOK, nil
		}
		if ctx.Err() != nil {
			return "", ctx.Err()
		}
		err = fmt.Errorf("after publishing the handler's %d messages (they are published): %w", len(outs), err)
		if IsPermanent(err) || retry.exhausted(attempt) {
			return outcomeDeadLetter, c.deadLetter(ctx, rec, err, attempt, logger)
		}
		c.retrying(ctx, logger, span, "after-publish step failed; retrying", err, attempt)
		if !sleep(ctx, retry.Backoff(attempt)) {
			return "", ctx.Err()
		}
	}
}

// callAfterPublish runs AfterPublish, turning a panic into a permanent
// error.
func (c *consumer) callAfterPublish(ctx context.Context, rec Record, outs []Message) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = Permanent(&panicError{value: p, stack: debug.Stack()})
		}
	}()
	return c.sub.AfterPublish(ctx, rec, outs)
}

func (c *consumer) retrying(ctx context.Context, logger *slog.Logger, span trace.Span, msg string, err error, attempt int) {
	logger.WarnContext(ctx, msg, slog.Any("error", err), slog.Int("attempt", attempt), slog.Int("attempts", c.bus.cfg.Retry.Attempts))
	span.AddEvent("retry", trace.WithAttributes(attribute.Int("attempt", attempt), attribute.String("error", err.Error())))
	c.bus.inst.retries.Add(ctx, 1, c.attrs)
}

// call runs the handler, turning a panic into a permanent error.
func (c *consumer) call(ctx context.Context, rec Record) (outs []Message, err error) {
	defer func() {
		if p := recover(); p != nil {
			outs, err = nil, Permanent(&panicError{value: p, stack: debug.Stack()})
		}
	}()
	return c.sub.Handler(ctx, rec)
}

// deadLetter writes rec to the dead-letter topic and returns once that is
// acknowledged (nil), or ctx's error if ctx is cancelled first: nothing
// else may be committed past a record that is in neither place.
func (c *consumer) deadLetter(ctx context.Context, rec Record, cause error, attempts int, logger *slog.Logger) error {
	reason := reasonExhausted
	var pe *panicError
	switch {
	case errors.As(cause, &pe):
		reason = reasonPanic
	case IsPermanent(cause):
		reason = reasonPermanent
	}
	text := cause.Error()
	if len(text) > reasonLimit {
		text = text[:reasonLimit] + "…"
	}
	if reason == reasonExhausted {
		text = fmt.Sprintf("gave up after %d attempts: %s", attempts, text)
	}

	dead := events.DeadLetter{
		Reason:    text,
		Topic:     rec.WireTopic,
		Partition: rec.Partition,
		Offset:    rec.Offset,
		Handler:   c.sub.Name,
		Group:     c.sub.Group,
		Attempts:  attempts,
		Time:      time.Now().UTC().Truncate(time.Second),
		Original:  rec.Event(),
	}
	dl := NewMessage(events.TopicDeadLetter, dead.Encode())
	stripped := false
	for try := 1; ; try++ {
		err := c.bus.publish(ctx, []Message{dl}, false)
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if IsPermanent(err) && !stripped {
			// The record itself cannot be written (a record larger than
			// the bus carries, from a foreign producer): dead-letter its
			// coordinates so that an operator can fetch it from the
			// source topic.
			stripped = true
			logger.WarnContext(ctx, "record cannot be copied to the dead-letter topic; dead-lettering its coordinates only", slog.Any("error", err))
			dead.Reason = text + "; value not copied (" + err.Error() + "): read it from the source topic at this partition and offset"
			dead.Original = events.Record{Key: rec.Key}
			dl = NewMessage(events.TopicDeadLetter, dead.Encode())
			continue
		}
		d := c.bus.cfg.Retry.Backoff(try)
		logger.WarnContext(ctx, "dead-lettering failed; retrying", slog.Any("error", err), slog.Int("attempt", try), slog.Duration("retry_in", d))
		if !sleep(ctx, d) {
			return ctx.Err()
		}
	}

	span := trace.SpanFromContext(ctx)
	span.RecordError(cause)
	span.SetStatus(codes.Error, "dead-lettered: "+reason)
	attrs := []any{
		slog.Any("error", cause), slog.String("reason", reason), slog.Int("attempts", attempts),
		slog.String("deadletter_topic", c.bus.Topic(events.TopicDeadLetter)),
	}
	if pe != nil {
		attrs = append(attrs, slog.String("stack", string(pe.stack)))
	}
	logger.ErrorContext(ctx, "record dead-lettered", attrs...)
	c.bus.inst.deadLetter.Add(ctx, 1, c.attrs, metric.WithAttributes(attrReason.String(reason)))
	return nil
}

// sleep waits d or until ctx is done; it reports whether it waited d.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// ConsumeAll runs one Consume per subscription (the same subscription
// twice is two members of its group, sharing the topic's partitions) until
// ctx is cancelled, then returns nil. If one of them fails or panics, the
// others are stopped and ConsumeAll returns what went wrong.
func (b *Bus) ConsumeAll(ctx context.Context, subs ...Subscription) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
	)
	fail := func(err error) {
		mu.Lock()
		errs = append(errs, err)
		mu.Unlock()
		cancel()
	}
	for i, sub := range subs {
		wg.Go(func() {
			defer func() {
				if p := recover(); p != nil {
					b.logger.Error("consumer panicked", slog.String("handler", sub.Name), slog.Any("panic", p), slog.String("stack", string(debug.Stack())))
					fail(fmt.Errorf("consumer %d (%s) panicked: %v", i+1, sub.Name, p))
				}
			}()
			if err := b.Consume(ctx, sub); err != nil {
				fail(fmt.Errorf("consumer %d (%s): %w", i+1, sub.Name, err))
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}
