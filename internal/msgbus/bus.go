// Package msgbus is Postern's Kafka message bus, over segmentio/kafka-go.
//
// It keeps the invariant the whole product rests on, nothing is lost:
// Publish returns only once every in-sync replica acknowledged the records
// (acks=all), and Consume commits a record's offset only after what its
// handler produced was acknowledged, or after the record itself was written
// to the dead-letter topic. A process killed at any moment therefore sees
// its last records again (at-least-once): handlers must be idempotent.
//
// Every record carries the W3C trace context of the span that published it,
// and a handler's context continues that trace.
package msgbus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/segmentio/kafka-go"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	semconv "go.opentelemetry.io/otel/semconv/v1.40.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/postern/postern/api/events"
)

// Options are the bus's collaborators. A nil field means the OpenTelemetry
// global (W3C trace context when no global propagator is set) or
// slog.Default().
type Options struct {
	Logger         *slog.Logger
	TracerProvider trace.TracerProvider
	MeterProvider  metric.MeterProvider
	Propagator     propagation.TextMapPropagator
	// ClientID names this process to the brokers (default "postern").
	ClientID string
}

// Bus publishes to and consumes from one Kafka cluster. It is safe for
// concurrent use.
type Bus struct {
	cfg       Config
	logger    *slog.Logger
	tracer    trace.Tracer
	prop      propagator
	inst      *instruments
	lag       lagWatch
	lagReg    metric.Registration // the lag gauge's callback
	clientID  string
	transport *kafka.Transport
	client    *kafka.Client
	writer    *kafka.Writer
	dialer    *kafka.Dialer

	mu     sync.Mutex
	closed bool
}

// New returns a bus on cfg.Brokers, which must not be empty (start the
// embedded broker first and put its addresses there). It does not connect:
// use Ping to see whether the brokers answer.
func New(cfg Config, opts Options) (*Bus, error) {
	if len(cfg.Brokers) == 0 {
		return nil, errors.New("msgbus: no brokers (start the embedded broker and pass its addresses)")
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("msgbus: invalid configuration: %w", err)
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.TracerProvider == nil {
		opts.TracerProvider = otel.GetTracerProvider()
	}
	if opts.MeterProvider == nil {
		opts.MeterProvider = otel.GetMeterProvider()
	}
	if opts.ClientID == "" {
		opts.ClientID = "postern"
	}
	inst, err := newInstruments(opts.MeterProvider)
	if err != nil {
		return nil, fmt.Errorf("msgbus: metrics: %w", err)
	}
	logger := opts.Logger.With(slog.String("component", "msgbus"))
	transport := &kafka.Transport{
		DialTimeout: cfg.DialTimeout,
		ClientID:    opts.ClientID,
	}
	addr := kafka.TCP(cfg.Brokers...)
	b := &Bus{
		cfg:      cfg,
		logger:   logger,
		tracer:   opts.TracerProvider.Tracer(instrumentationName),
		prop:     propagator{opts.Propagator},
		inst:     inst,
		clientID: opts.ClientID,
		// Client timeouts apply to whole requests (create topics).
		transport: transport,
		client:    &kafka.Client{Addr: addr, Timeout: cfg.RequestTimeout, Transport: transport},
		dialer: &kafka.Dialer{
			ClientID:  opts.ClientID,
			Timeout:   cfg.DialTimeout,
			DualStack: true,
		},
	}
	b.writer = &kafka.Writer{
		Addr: addr,
		// Murmur2 is the Java client's partitioner: a key lands on the
		// same partition whichever client wrote it. Records without a
		// key are spread at random.
		Balancer:     kafka.Murmur2Balancer{},
		RequiredAcks: kafka.RequireAll,
		// Publish is synchronous: a partial batch waits BatchTimeout,
		// so that has to be short (kafka-go's default is 1s).
		BatchTimeout: cfg.BatchTimeout,
		BatchSize:    1000,
		BatchBytes:   int64(cfg.ProducerBatchBytes()),
		ReadTimeout:  cfg.RequestTimeout,
		WriteTimeout: cfg.RequestTimeout,
		Transport:    transport,
		ErrorLogger:  kafkaLogger{logger, slog.LevelDebug},
	}
	b.lagReg, err = opts.MeterProvider.Meter(instrumentationName).RegisterCallback(b.observeLag, inst.lag)
	if err != nil {
		return nil, fmt.Errorf("msgbus: metrics: consumer lag: %w", err)
	}
	return b, nil
}

// Config returns the configuration the bus runs with.
func (b *Bus) Config() Config { return b.cfg }

// Topic returns the wire name of a logical topic: events.Topic(prefix, logical).
func (b *Bus) Topic(logical string) string { return events.Topic(b.cfg.TopicPrefix, logical) }

// EnsureTopics creates the logical topics that do not exist yet, with the
// configured partitions, replication factor and a max.message.bytes that
// fits MaxRecordBytes. Existing topics are left alone (a warning is logged
// when one would refuse records the bus accepts). It is idempotent and safe
// to run from several processes at once.
func (b *Bus) EnsureTopics(ctx context.Context, logical ...string) error {
	if len(logical) == 0 {
		return nil
	}
	wire := make([]string, 0, len(logical))
	seen := map[string]bool{}
	for _, l := range logical {
		if l == "" {
			return errors.New("msgbus: ensure topics: empty topic name")
		}
		t := b.Topic(l)
		if !seen[t] {
			seen[t] = true
			wire = append(wire, t)
		}
	}
	// kafka-go answers this from its transport's metadata cache, which
	// may be a few seconds old: a topic someone else just created shows
	// up as missing, and CreateTopics then says it already exists.
	meta, err := b.client.Metadata(ctx, &kafka.MetadataRequest{Topics: wire})
	if err != nil {
		return fmt.Errorf("msgbus: ensure topics: metadata: %w", err)
	}
	exists := map[string]bool{}
	for _, t := range meta.Topics {
		if t.Error == nil && len(t.Partitions) > 0 {
			exists[t.Name] = true
		}
	}
	maxBytes := strconv.Itoa(b.cfg.BrokerMaxMessageBytes())
	var create []kafka.TopicConfig
	var existing []string
	for _, t := range wire {
		if exists[t] {
			existing = append(existing, t)
			continue
		}
		create = append(create, kafka.TopicConfig{
			Topic:             t,
			NumPartitions:     b.cfg.Partitions,
			ReplicationFactor: b.cfg.ReplicationFactor,
			ConfigEntries:     []kafka.ConfigEntry{{ConfigName: "max.message.bytes", ConfigValue: maxBytes}},
		})
	}
	if len(create) > 0 {
		resp, err := b.client.CreateTopics(ctx, &kafka.CreateTopicsRequest{Topics: create})
		if err != nil {
			return fmt.Errorf("msgbus: create topics: %w", err)
		}
		var errs []error
		for _, tc := range create {
			switch err := resp.Errors[tc.Topic]; {
			case err == nil:
				b.logger.InfoContext(ctx, "topic created", slog.String("topic", tc.Topic),
					slog.Int("partitions", tc.NumPartitions), slog.Int("replication_factor", tc.ReplicationFactor),
					slog.String("max_message_bytes", maxBytes))
			case errors.Is(err, kafka.TopicAlreadyExists):
				// Someone else created it since we looked.
			default:
				errs = append(errs, fmt.Errorf("create topic %s: %w", tc.Topic, err))
			}
		}
		if err := errors.Join(errs...); err != nil {
			return fmt.Errorf("msgbus: %w", err)
		}
	}
	if len(existing) > 0 {
		b.checkTopicLimits(ctx, existing)
	}
	return nil
}

// checkTopicLimits warns about existing topics whose max.message.bytes is
// below what the bus needs; the broker would refuse large records there.
// It is advisory: errors are logged at debug level only.
func (b *Bus) checkTopicLimits(ctx context.Context, topics []string) {
	req := &kafka.DescribeConfigsRequest{}
	for _, t := range topics {
		req.Resources = append(req.Resources, kafka.DescribeConfigRequestResource{
			ResourceType: kafka.ResourceTypeTopic,
			ResourceName: t,
			ConfigNames:  []string{"max.message.bytes"},
		})
	}
	resp, err := b.client.DescribeConfigs(ctx, req)
	if err != nil {
		b.logger.DebugContext(ctx, "describe topic configs failed", slog.Any("error", err))
		return
	}
	need := b.cfg.BrokerMaxMessageBytes()
	for _, r := range resp.Resources {
		for _, e := range r.ConfigEntries {
			if e.ConfigName != "max.message.bytes" {
				continue
			}
			if v, err := strconv.Atoi(e.ConfigValue); err == nil && v < need {
				b.logger.WarnContext(ctx, "existing topic accepts smaller records than the bus: raise its max.message.bytes",
					slog.String("topic", r.ResourceName), slog.Int("max_message_bytes", v), slog.Int("needed_bytes", need))
			}
		}
	}
}

// Ping reports whether a broker answers a metadata request, for readiness
// checks. It asks the brokers themselves, not a cache.
func (b *Bus) Ping(ctx context.Context) error {
	var errs []error
	for _, addr := range b.cfg.Brokers {
		conn, err := b.dialer.DialContext(ctx, "tcp", addr)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if dl, ok := ctx.Deadline(); ok {
			_ = conn.SetDeadline(dl)
		} else {
			_ = conn.SetDeadline(time.Now().Add(b.cfg.RequestTimeout))
		}
		_, err = conn.Brokers() // a metadata request
		conn.Close()
		if err == nil {
			return nil
		}
		errs = append(errs, fmt.Errorf("%s: %w", addr, err))
	}
	return fmt.Errorf("msgbus: no broker answers: %w", errors.Join(errs...))
}

// Publish writes msgs and returns once the broker acknowledged every one
// of them on all in-sync replicas (acks=all). Each record gets the W3C
// trace context of its own producer span, a child of ctx's span.
//
// Nothing is written if any message is invalid: an empty topic, or a
// record too large (the error wraps ErrTooLarge, names the size and the
// limit, and is permanent). Other errors are temporary: the records may or
// may not have been written, and publishing them again is safe for
// idempotent consumers.
func (b *Bus) Publish(ctx context.Context, msgs ...Message) error {
	return b.publish(ctx, msgs, true)
}

func (b *Bus) checkMessage(m Message) error {
	if m.Topic == "" {
		return Permanent(errors.New("msgbus: publish: message without a topic"))
	}
	if n := len(m.Value); n > b.cfg.MaxRecordBytes {
		return Permanent(fmt.Errorf("msgbus: publish to %s: value of %d bytes is larger than the %d-byte limit (bus.max_record_bytes): %w",
			b.Topic(m.Topic), n, b.cfg.MaxRecordBytes, ErrTooLarge))
	}
	n := len(m.Key)
	for _, h := range m.Headers {
		n += len(h.Key) + len(h.Value)
	}
	if n > maxKeyAndHeaders {
		return Permanent(fmt.Errorf("msgbus: publish to %s: key and headers of %d bytes are larger than the %d-byte limit: %w",
			b.Topic(m.Topic), n, maxKeyAndHeaders, ErrTooLarge))
	}
	return nil
}

// publish writes msgs; inject says whether to set their trace context
// (false for dead letters, which keep the original record's headers).
func (b *Bus) publish(ctx context.Context, msgs []Message, inject bool) error {
	if len(msgs) == 0 {
		return nil
	}
	if b.isClosed() {
		return errors.New("msgbus: publish: bus closed")
	}
	for _, m := range msgs {
		if err := b.checkMessage(m); err != nil {
			return err
		}
	}
	kms := make([]kafka.Message, len(msgs))
	spans := make([]trace.Span, len(msgs))
	for i, m := range msgs {
		wire := b.Topic(m.Topic)
		sctx, span := b.tracer.Start(ctx, "send "+wire,
			trace.WithSpanKind(trace.SpanKindProducer),
			trace.WithAttributes(
				semconv.MessagingSystemKafka,
				semconv.MessagingOperationTypeSend,
				semconv.MessagingOperationName("send"),
				semconv.MessagingDestinationName(wire),
				semconv.MessagingClientID(b.clientID),
				semconv.MessagingMessageBodySize(len(m.Value)),
			))
		if len(m.Key) > 0 {
			span.SetAttributes(semconv.MessagingKafkaMessageKey(string(m.Key)))
		}
		spans[i] = span
		hs := m.Headers
		if inject {
			hs = append([]Header(nil), hs...)
			b.prop.inject(sctx, &hs)
		}
		kms[i] = kafka.Message{Topic: wire, Key: m.Key, Value: m.Value, Headers: toKafkaHeaders(hs)}
	}

	start := time.Now()
	err := b.writer.WriteMessages(ctx, kms...)
	elapsed := time.Since(start).Seconds()

	var werrs kafka.WriteErrors
	errors.As(err, &werrs)
	failed := 0
	for i, span := range spans {
		merr := err
		if werrs != nil {
			merr = werrs[i]
		}
		topic := attribute.String(string(attrTopic), kms[i].Topic)
		if merr != nil {
			failed++
			span.RecordError(merr)
			span.SetStatus(codes.Error, merr.Error())
			span.SetAttributes(semconv.ErrorTypeKey.String(errorType(merr)))
		} else {
			b.inst.published.Add(ctx, 1, metric.WithAttributes(topic))
			b.inst.publishedBytes.Add(ctx, int64(len(kms[i].Key)+len(kms[i].Value)), metric.WithAttributes(topic))
		}
		span.End()
	}
	b.inst.publishDuration.Record(ctx, elapsed, metric.WithAttributes(attribute.Bool("error", err != nil)))
	if err == nil {
		return nil
	}
	// Report the first failure; all records of a batch share it.
	for _, e := range werrs {
		if e != nil {
			err = e
			break
		}
	}
	err = fmt.Errorf("msgbus: publish %d of %d records to %s: %w", failed, len(kms), kms[0].Topic, err)
	if permanentKafkaError(err) {
		err = Permanent(err)
	}
	return err
}

// permanentKafkaError reports broker refusals that no retry can fix.
func permanentKafkaError(err error) bool {
	var ke kafka.Error
	if !errors.As(err, &ke) {
		var tl kafka.MessageTooLargeError
		return errors.As(err, &tl)
	}
	switch ke {
	case kafka.MessageSizeTooLarge, kafka.RecordListTooLarge, kafka.InvalidTopic, kafka.InvalidRecord:
		return true
	}
	return false
}

func errorType(err error) string {
	var ke kafka.Error
	if errors.As(err, &ke) {
		return ke.Title()
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return "timeout"
	}
	var ne net.Error
	if errors.As(err, &ne) {
		return "network"
	}
	return "_OTHER"
}

func toKafkaHeaders(hs []Header) []kafka.Header {
	if len(hs) == 0 {
		return nil
	}
	out := make([]kafka.Header, len(hs))
	for i, h := range hs {
		out[i] = kafka.Header{Key: h.Key, Value: h.Value}
	}
	return out
}

func fromKafkaHeaders(hs []kafka.Header) []Header {
	if len(hs) == 0 {
		return nil
	}
	out := make([]Header, len(hs))
	for i, h := range hs {
		out[i] = Header{Key: h.Key, Value: h.Value}
	}
	return out
}

func (b *Bus) isClosed() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.closed
}

// Close flushes and closes the producer and the bus's connections. Stop
// the Consume calls (cancel their contexts) first.
func (b *Bus) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	b.mu.Unlock()
	if err := b.lagReg.Unregister(); err != nil {
		b.logger.Debug("unregistering the consumer lag gauge", slog.Any("error", err))
	}
	err := b.writer.Close()
	b.transport.CloseIdleConnections()
	if err != nil {
		return fmt.Errorf("msgbus: close: %w", err)
	}
	return nil
}

// kafkaLogger adapts kafka-go's printf loggers to slog.
type kafkaLogger struct {
	l     *slog.Logger
	level slog.Level
}

func (k kafkaLogger) Printf(format string, args ...any) {
	ctx := context.Background()
	if !k.l.Enabled(ctx, k.level) {
		return
	}
	k.l.Log(ctx, k.level, fmt.Sprintf(format, args...), slog.String("source_lib", "kafka-go"))
}
