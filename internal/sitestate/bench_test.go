package sitestate_test

import (
	"fmt"
	"path/filepath"
	"testing"

	"github.com/postern/postern/internal/sitestate"
	"github.com/postern/postern/internal/testenv"
)

// BenchmarkApplySnapshot measures replacing a replica of 1000 users (two
// lookup keys each), the size of a large office's first sync.
func BenchmarkApplySnapshot(b *testing.B) {
	const users = 1000
	cs := sitestate.ChangeSet{Snapshot: true, Cursor: "c"}
	for i := range users {
		cs.Put = append(cs.Put, sitestate.Entry{
			Kind: "user", ID: fmt.Sprintf("u%05d", i), Version: 1,
			Data: []byte(fmt.Sprintf(`{"name":"User %d","site":"central","quota_bytes":1073741824}`, i)),
			Keys: []string{fmt.Sprintf("user%d@example.com", i), fmt.Sprintf("user%d", i)},
		})
	}
	run := func(b *testing.B, s sitestate.Store) {
		b.ReportAllocs()
		for b.Loop() {
			if err := s.Directory().Apply(b.Context(), cs); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(users), "entries/op")
	}
	b.Run("sqlite", func(b *testing.B) {
		s, err := sitestate.OpenSQLite(b.Context(), filepath.Join(b.TempDir(), "site.db"))
		if err != nil {
			b.Fatal(err)
		}
		defer s.Close()
		run(b, s)
	})
	b.Run("redis", func(b *testing.B) {
		addr := testenv.RedisAddr(b)
		prefix := testPrefix(b, addr)
		s, err := sitestate.OpenRedis(b.Context(), sitestate.RedisConfig{Addr: addr, KeyPrefix: prefix})
		if err != nil {
			b.Fatal(err)
		}
		defer s.Close()
		run(b, s)
	})
}
