package msgbus

import (
	"time"

	"github.com/postern/postern/api/events"
)

// Message is a record to publish, or what a handler produces.
type Message struct {
	// Topic is the logical topic (events.TopicInbound, ...); the bus adds
	// the site prefix.
	Topic string
	// Key decides the partition (records with the same key stay in
	// order); nil spreads records over the partitions.
	Key   []byte
	Value []byte
	// Headers travel with the record. The bus adds the W3C trace context
	// (traceparent, tracestate) when it publishes.
	Headers []Header
}

// Header is a Kafka record header: the contract's own type, so that
// records encoded by api/events travel without conversion.
type Header = events.Header

// NewMessage is the message that carries an encoded contract record on a
// logical topic.
func NewMessage(topic string, r events.Record) Message {
	return Message{Topic: topic, Key: r.Key, Value: r.Value, Headers: r.Headers}
}

// Event is the message as a contract record, for the api/events decoders.
func (m Message) Event() events.Record {
	return events.Record{Key: m.Key, Value: m.Value, Headers: m.Headers}
}

// Header returns the value of the last header named key (names are
// case-sensitive, as in Kafka).
func (m Message) Header(key string) (string, bool) {
	for i := len(m.Headers) - 1; i >= 0; i-- {
		if m.Headers[i].Key == key {
			return string(m.Headers[i].Value), true
		}
	}
	return "", false
}

// SetHeader replaces every header named key with one holding value.
func (m *Message) SetHeader(key, value string) {
	m.Headers = setHeader(m.Headers, key, []byte(value))
}

// setHeader returns hs without the headers named key and with key=value
// appended. It does not modify hs's backing array.
func setHeader(hs []Header, key string, value []byte) []Header {
	out := make([]Header, 0, len(hs)+1)
	for _, h := range hs {
		if h.Key != key {
			out = append(out, h)
		}
	}
	return append(out, Header{Key: key, Value: value})
}

// Record is a message read from the bus.
type Record struct {
	Message // Message.Topic is the logical topic subscribed to.
	// WireTopic is the topic's name on the broker, prefix included.
	WireTopic string
	Partition int
	Offset    int64
	// Time is the record's timestamp (when it was produced).
	Time time.Time
}

// headerCarrier lets OpenTelemetry propagators read and write record
// headers.
type headerCarrier struct{ hs *[]Header }

func (c headerCarrier) Get(key string) string {
	hs := *c.hs
	for i := len(hs) - 1; i >= 0; i-- {
		if hs[i].Key == key {
			return string(hs[i].Value)
		}
	}
	return ""
}

func (c headerCarrier) Set(key, value string) { *c.hs = setHeader(*c.hs, key, []byte(value)) }

func (c headerCarrier) Keys() []string {
	keys := make([]string, 0, len(*c.hs))
	for _, h := range *c.hs {
		keys = append(keys, h.Key)
	}
	return keys
}
