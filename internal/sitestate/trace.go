package sitestate

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
)

// traceAppend is a validated Append: the keys without duplicates, the
// entry's ID, time (Unix ms) and compacted data, the TTL in milliseconds
// and the list bound.
type traceAppend struct {
	keys  []string
	id    string
	atMS  int64
	data  []byte
	ttlMS int64
	max   int
}

func prepareTraceAppend(keys []string, e TraceEntry, p TracePolicy) (traceAppend, error) {
	if len(keys) == 0 {
		return traceAppend{}, fmt.Errorf("%w: trace append without a key", ErrInvalid)
	}
	var a traceAppend
	for _, k := range keys {
		if err := checkTraceKey("trace key", k); err != nil {
			return traceAppend{}, err
		}
		if !slices.Contains(a.keys, k) {
			a.keys = append(a.keys, k)
		}
	}
	if err := checkTraceKey("trace entry id", e.ID); err != nil {
		return traceAppend{}, err
	}
	ms, err := ttlMS(p.TTL)
	if err != nil {
		return traceAppend{}, err
	}
	if p.MaxEntries < 1 || p.MaxEntries > MaxTraceEntries {
		return traceAppend{}, fmt.Errorf("%w: trace list bound %d: must be 1 to %d", ErrInvalid, p.MaxEntries, MaxTraceEntries)
	}
	a.id, a.atMS, a.ttlMS, a.max = e.ID, toMS(stamp(e.At)), ms, p.MaxEntries
	if len(e.Data) > 0 {
		var b bytes.Buffer
		if err := json.Compact(&b, e.Data); err != nil {
			return traceAppend{}, fmt.Errorf("%w: trace entry %q: data is not JSON: %v", ErrInvalid, e.ID, err)
		}
		if b.Len() > MaxTraceData {
			return traceAppend{}, fmt.Errorf("%w: trace entry %q: data of %d bytes, more than %d", ErrInvalid, e.ID, b.Len(), MaxTraceData)
		}
		a.data = b.Bytes()
	}
	return a, nil
}

func checkTraceKey(what, k string) error {
	if err := checkString(what, k); err != nil {
		return err
	}
	if len(k) > MaxTraceKey {
		return fmt.Errorf("%w: %s longer than %d bytes", ErrInvalid, what, MaxTraceKey)
	}
	return nil
}

// traceData returns stored data as TraceEntry.Data: nil when empty.
func traceData(b []byte) json.RawMessage {
	if len(b) == 0 {
		return nil
	}
	return json.RawMessage(bytes.Clone(b))
}
