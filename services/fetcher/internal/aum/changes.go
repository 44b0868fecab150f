package aum

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"

	"github.com/postern/postern/api/usersclient"
	"github.com/postern/postern/internal/replica"
	"github.com/postern/postern/internal/sitestate"
)

// Operations of the sync feed.
const (
	opUpsert = "upsert"
	opDelete = "delete"
)

// changeSet turns one /v1/sync response into one atomic change set of the
// replica. A batch is collapsed so that a ref appears once: the last change
// of an object wins; an object deleted and created again within the batch
// is both deleted and put (deletes are applied first), so the new object
// replaces the old one whatever their versions. Changes of kinds this
// client does not know are skipped and returned in skipped (kind → count).
// A malformed change rejects the whole batch: nothing of it is applied.
func changeSet(resp *usersclient.SyncResponse) (cs sitestate.ChangeSet, skipped map[string]int, err error) {
	type final struct {
		last    int  // index of the ref's last change in the batch
		put     bool // the last change is an upsert
		deleted bool // a delete happened in the batch before the last upsert
		entry   sitestate.Entry
	}
	refs := make(map[sitestate.Ref]*final, len(resp.Changes))
	for i, c := range resp.Changes {
		kind := string(c.Kind)
		if !slices.Contains(replica.Kinds, kind) {
			if skipped == nil {
				skipped = map[string]int{}
			}
			skipped[kind]++
			continue
		}
		if c.ID == "" {
			return sitestate.ChangeSet{}, nil, fmt.Errorf("change %d (seq %d): %s without an id", i, c.Seq, kind)
		}
		ref := sitestate.Ref{Kind: kind, ID: c.ID}
		f := refs[ref]
		if f == nil {
			f = &final{}
			refs[ref] = f
		}
		f.last = i
		switch string(c.Op) {
		case opUpsert:
			version, err := dataVersion(c.Data)
			if err != nil {
				return sitestate.ChangeSet{}, nil, fmt.Errorf("change seq %d: upsert of %s %s: %w", c.Seq, kind, c.ID, err)
			}
			f.put = true
			f.entry = sitestate.Entry{Kind: kind, ID: c.ID, Version: version, Data: c.Data, Keys: c.Keys}
		case opDelete:
			f.put = false
			f.deleted = true
			f.entry = sitestate.Entry{}
		default:
			return sitestate.ChangeSet{}, nil, fmt.Errorf("change seq %d: %s %s: unknown op %q (want upsert or delete)", c.Seq, kind, c.ID, c.Op)
		}
	}

	order := make([]sitestate.Ref, 0, len(refs))
	for r := range refs {
		order = append(order, r)
	}
	slices.SortFunc(order, func(a, b sitestate.Ref) int { return refs[a].last - refs[b].last })

	cs = sitestate.ChangeSet{Snapshot: resp.Snapshot, Cursor: resp.Cursor}
	for _, r := range order {
		f := refs[r]
		if f.deleted && !resp.Snapshot {
			cs.Delete = append(cs.Delete, r)
		}
		if f.put {
			cs.Put = append(cs.Put, f.entry)
		}
	}
	return cs, skipped, nil
}

// dataVersion is the "version" member of an upsert's data: 0 when absent.
// The data must be a JSON object.
func dataVersion(data json.RawMessage) (int64, error) {
	d := bytes.TrimSpace(data)
	if len(d) == 0 || d[0] != '{' {
		return 0, fmt.Errorf("data is not a JSON object")
	}
	var v struct {
		Version *int64 `json:"version"`
	}
	if err := json.Unmarshal(d, &v); err != nil {
		return 0, fmt.Errorf("data: %w", err)
	}
	if v.Version == nil {
		return 0, nil
	}
	if *v.Version < 0 {
		return 0, fmt.Errorf("data: negative version %d", *v.Version)
	}
	return *v.Version, nil
}
