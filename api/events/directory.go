package events

import (
	"encoding/json"
	"fmt"
	"strconv"
	"time"
)

// Version of the directory.changes record.
const DirectoryChangeVersion = 1

// Operations in the directory change log.
const (
	OpUpsert = "upsert" // the object was created or changed; Data is its new state
	OpDelete = "delete" // the object was deleted; Data is empty
)

// DirectoryChange is one entry of the users service's change log, on
// directory.changes, in order of Seq. The same entries feed /v1/sync.
type DirectoryChange struct {
	Seq   int64           `json:"seq"`            // position in the change log, strictly increasing
	At    time.Time       `json:"at"`             // commit time of the change
	Kind  string          `json:"kind"`           // "site", "user", "group", "pop3_account", "shared_mailbox"
	ID    string          `json:"id"`             // the object's id
	Op    string          `json:"op"`             // OpUpsert or OpDelete
	Data  json.RawMessage `json:"data,omitempty"` // the object's new state for upserts (secrets never included in clear)
	Actor string          `json:"actor,omitempty"`
}

// Validate reports the first missing or impossible field.
func (c DirectoryChange) Validate() error {
	switch {
	case c.Seq <= 0:
		return malformed("directory.changes: seq %d is not positive", c.Seq)
	case c.Kind == "" || c.ID == "":
		return malformed("directory.changes %d: kind and id are required", c.Seq)
	case c.At.IsZero():
		return malformed("directory.changes %d: at is zero", c.Seq)
	}
	switch c.Op {
	case OpUpsert:
		if len(c.Data) == 0 || !json.Valid(c.Data) {
			return malformed("directory.changes %d: upsert without valid JSON data", c.Seq)
		}
	case OpDelete:
	default:
		return malformed("directory.changes %d: op %q unknown", c.Seq, c.Op)
	}
	return nil
}

// Encode returns the record for directory.changes, keyed by kind/id so that
// changes to one object stay in order within a partition.
func (c DirectoryChange) Encode() (Record, error) {
	if err := c.Validate(); err != nil {
		return Record{}, err
	}
	v, err := json.Marshal(c)
	if err != nil {
		return Record{}, fmt.Errorf("directory.changes: %w", err)
	}
	var h headerWriter
	h.add(HeaderType, TopicDirectoryChanges)
	h.add(HeaderVersion, strconv.Itoa(DirectoryChangeVersion))
	return Record{Key: []byte(c.Kind + "/" + c.ID), Value: v, Headers: h}, nil
}

// DecodeDirectoryChange reads a directory.changes record.
func DecodeDirectoryChange(r Record) (DirectoryChange, error) {
	if err := checkType(r, TopicDirectoryChanges, DirectoryChangeVersion); err != nil {
		return DirectoryChange{}, err
	}
	var c DirectoryChange
	if err := decodeStrict(r.Value, &c); err != nil {
		return DirectoryChange{}, malformed("directory.changes: %v", err)
	}
	return c, c.Validate()
}
