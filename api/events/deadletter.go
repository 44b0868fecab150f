package events

import (
	"strconv"
	"time"
)

// DeadLetter is the view of a mail.deadletter record: the original record
// (key, value, headers) with the reason it could not be handled.
type DeadLetter struct {
	Reason    string    // why the handler gave up
	Topic     string    // wire topic the record was read from
	Partition int       // its partition
	Offset    int64     // its offset
	Handler   string    // the handler that gave up
	Group     string    // the consumer group
	Attempts  int       // how many times it was tried
	Time      time.Time // when it was dead-lettered
	Original  Record    // the original record, without the dead-letter headers
}

var deadLetterHeaders = map[string]bool{
	HeaderDeadLetterReason: true, HeaderDeadLetterTopic: true, HeaderDeadLetterPartition: true,
	HeaderDeadLetterOffset: true, HeaderDeadLetterHandler: true, HeaderDeadLetterGroup: true,
	HeaderDeadLetterAttempts: true, HeaderDeadLetterTime: true,
}

// Encode returns the dead-letter record: the original key and value, the
// original headers, and the dead-letter headers after them. Dead-letter
// headers already on the original (a replayed record that failed again) are
// replaced, not repeated.
func (d DeadLetter) Encode() Record {
	h := make(headerWriter, 0, len(d.Original.Headers)+len(deadLetterHeaders))
	for _, oh := range d.Original.Headers {
		if !deadLetterHeaders[oh.Key] {
			h = append(h, oh)
		}
	}
	h.add(HeaderDeadLetterReason, d.Reason)
	h.add(HeaderDeadLetterTopic, d.Topic)
	h.add(HeaderDeadLetterPartition, strconv.Itoa(d.Partition))
	h.add(HeaderDeadLetterOffset, strconv.FormatInt(d.Offset, 10))
	h.add(HeaderDeadLetterHandler, d.Handler)
	h.addOpt(HeaderDeadLetterGroup, d.Group)
	h.add(HeaderDeadLetterAttempts, strconv.Itoa(d.Attempts))
	h.addTime(HeaderDeadLetterTime, d.Time)
	return Record{Key: d.Original.Key, Value: d.Original.Value, Headers: h}
}

// DecodeDeadLetter reads a mail.deadletter record.
func DecodeDeadLetter(r Record) (DeadLetter, error) {
	hr := headerReader{r: r, typ: TopicDeadLetter}
	d := DeadLetter{
		Reason:  hr.required(HeaderDeadLetterReason),
		Topic:   hr.required(HeaderDeadLetterTopic),
		Handler: hr.required(HeaderDeadLetterHandler),
		Group:   hr.optional(HeaderDeadLetterGroup),
		Time:    hr.time(HeaderDeadLetterTime, false),
	}
	d.Partition = int(hr.int(HeaderDeadLetterPartition))
	d.Offset = hr.int(HeaderDeadLetterOffset)
	d.Attempts = int(hr.int(HeaderDeadLetterAttempts))
	if hr.err != nil {
		return DeadLetter{}, hr.err
	}
	d.Original = Record{Key: r.Key, Value: r.Value}
	for _, h := range r.Headers {
		if !deadLetterHeaders[h.Key] {
			d.Original.Headers = append(d.Original.Headers, h)
		}
	}
	return d, nil
}

func (hr *headerReader) int(key string) int64 {
	v := hr.required(key)
	if v == "" {
		return 0
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		hr.fail("%s: header %s: %q is not an integer", hr.typ, key, v)
	}
	return n
}
