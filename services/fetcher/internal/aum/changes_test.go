package aum

import (
	"encoding/json"
	"errors"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/postern/postern/api/usersclient"
	"github.com/postern/postern/internal/sitestate"
)

func upsert(seq int64, kind, id string, version int, keys ...string) usersclient.SyncChange {
	data, _ := json.Marshal(map[string]any{"id": id, "version": version})
	return usersclient.SyncChange{Seq: seq, Kind: usersclient.ChangeKind(kind), ID: id, Op: opUpsert, Data: data, Keys: keys}
}

func del(seq int64, kind, id string) usersclient.SyncChange {
	return usersclient.SyncChange{Seq: seq, Kind: usersclient.ChangeKind(kind), ID: id, Op: opDelete}
}

func entry(kind, id string, version int64, keys ...string) sitestate.Entry {
	data, _ := json.Marshal(map[string]any{"id": id, "version": version})
	return sitestate.Entry{Kind: kind, ID: id, Version: version, Data: data, Keys: keys}
}

func TestChangeSetCollapsesABatch(t *testing.T) {
	for _, tc := range []struct {
		name     string
		snapshot bool
		changes  []usersclient.SyncChange
		put      []sitestate.Entry
		del      []sitestate.Ref
		skipped  map[string]int
	}{
		{
			name:    "last upsert wins",
			changes: []usersclient.SyncChange{upsert(1, "user", "u1", 1, "a"), upsert(2, "user", "u2", 1, "b"), upsert(3, "user", "u1", 2, "c")},
			put:     []sitestate.Entry{entry("user", "u2", 1, "b"), entry("user", "u1", 2, "c")},
		},
		{
			name:    "upsert then delete is a delete",
			changes: []usersclient.SyncChange{upsert(1, "user", "u1", 3), del(2, "user", "u1")},
			del:     []sitestate.Ref{{Kind: "user", ID: "u1"}},
		},
		{
			// A site deleted and created again under the same name starts
			// at version 1: the delete makes the put replace the old one.
			name:    "delete then upsert is both",
			changes: []usersclient.SyncChange{del(1, "site", "hq"), upsert(2, "site", "hq", 1, "example.org")},
			put:     []sitestate.Entry{entry("site", "hq", 1, "example.org")},
			del:     []sitestate.Ref{{Kind: "site", ID: "hq"}},
		},
		{
			name:    "same id, different kinds",
			changes: []usersclient.SyncChange{upsert(1, "user", "x", 1), del(2, "group", "x")},
			put:     []sitestate.Entry{entry("user", "x", 1)},
			del:     []sitestate.Ref{{Kind: "group", ID: "x"}},
		},
		{
			name:    "unknown kinds are skipped",
			changes: []usersclient.SyncChange{upsert(1, "template", "t1", 1), upsert(2, "pop3_account", "p1", 4), upsert(3, "template", "t2", 1)},
			put:     []sitestate.Entry{entry("pop3_account", "p1", 4)},
			skipped: map[string]int{"template": 2},
		},
		{
			name:     "a snapshot has no deletes",
			snapshot: true,
			changes:  []usersclient.SyncChange{upsert(9, "user", "u1", 2), del(9, "user", "u2")},
			put:      []sitestate.Entry{entry("user", "u1", 2)},
		},
		{
			name:    "no changes",
			changes: nil,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cs, skipped, err := changeSet(&usersclient.SyncResponse{Cursor: "42", Snapshot: tc.snapshot, Changes: tc.changes})
			if err != nil {
				t.Fatal(err)
			}
			want := sitestate.ChangeSet{Snapshot: tc.snapshot, Cursor: "42", Put: tc.put, Delete: tc.del}
			if !reflect.DeepEqual(cs, want) {
				t.Errorf("change set\n got %+v\nwant %+v", cs, want)
			}
			if !reflect.DeepEqual(skipped, tc.skipped) {
				t.Errorf("skipped = %v, want %v", skipped, tc.skipped)
			}
		})
	}
}

func TestChangeSetVersion(t *testing.T) {
	for _, tc := range []struct {
		data    string
		version int64
		err     string
	}{
		{`{"id":"u1","version":7}`, 7, ""},
		{`{"id":"u1"}`, 0, ""},
		{`{"version":null}`, 0, ""},
		{`{"version":"7"}`, 0, "data:"},
		{`{"version":-1}`, 0, "negative version"},
		{`{"version":1.5}`, 0, "data:"},
		{`[1,2]`, 0, "not a JSON object"},
		{``, 0, "not a JSON object"},
	} {
		c := usersclient.SyncChange{Seq: 5, Kind: "user", ID: "u1", Op: opUpsert, Data: json.RawMessage(tc.data)}
		cs, _, err := changeSet(&usersclient.SyncResponse{Cursor: "5", Changes: []usersclient.SyncChange{c}})
		switch {
		case tc.err == "" && err != nil:
			t.Errorf("data %s: %v", tc.data, err)
		case tc.err == "" && cs.Put[0].Version != tc.version:
			t.Errorf("data %s: version %d, want %d", tc.data, cs.Put[0].Version, tc.version)
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err) || !strings.Contains(err.Error(), "seq 5")):
			t.Errorf("data %s: error %v, want one with %q naming the change", tc.data, err, tc.err)
		}
	}
}

func TestChangeSetRefusesABadBatchWhole(t *testing.T) {
	for name, bad := range map[string]usersclient.SyncChange{
		"unknown op": {Seq: 3, Kind: "user", ID: "u2", Op: "rename"},
		"no id":      {Seq: 3, Kind: "user", Op: opDelete},
	} {
		_, _, err := changeSet(&usersclient.SyncResponse{Cursor: "3", Changes: []usersclient.SyncChange{upsert(2, "user", "u1", 1), bad}})
		if err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

// TestRecreatedObjectReplacesTheOld applies a collapsed batch to a real
// replica: an object deleted and created again (its version restarting at
// 1) replaces the stored one, which a put alone would not (stale version).
func TestRecreatedObjectReplacesTheOld(t *testing.T) {
	ctx := t.Context()
	st, err := sitestate.OpenSQLite(ctx, filepath.Join(t.TempDir(), "site.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	d := st.Directory()
	if err := d.Apply(ctx, sitestate.ChangeSet{Cursor: "1", Put: []sitestate.Entry{entry("site", "hq", 5, "old.example.org")}}); err != nil {
		t.Fatal(err)
	}
	cs, _, err := changeSet(&usersclient.SyncResponse{Cursor: "3", Changes: []usersclient.SyncChange{
		del(2, "site", "hq"), upsert(3, "site", "hq", 1, "new.example.org"),
	}})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Apply(ctx, cs); err != nil {
		t.Fatal(err)
	}
	if e, err := d.Lookup(ctx, "site", "new.example.org"); err != nil || e.Version != 1 {
		t.Errorf("recreated site: %+v, %v", e, err)
	}
	if _, err := d.Lookup(ctx, "site", "old.example.org"); !errors.Is(err, sitestate.ErrNotFound) {
		t.Errorf("the old site's domain still resolves: %v", err)
	}
}
