package store_test

import (
	"context"
	"database/sql"
	"slices"
	"testing"
	"time"

	"github.com/postern/postern/services/users/internal/store"
	"github.com/postern/postern/services/users/internal/store/storetest"
)

const benchUsers = 100_000

// BenchmarkListUsers measures one page of ListUsers (limit 100, with its
// total count) over a directory of 100,000 users, walking every page in
// turn, and a full Snapshot of that directory. It reports the latency
// percentiles of a page as p50_ms and p99_ms.
//
// Seeding takes about 10 s per backend (run with -v to see it).
//
//	go test -run '^$' -bench ListUsers -benchtime 2s -v ./internal/store/
func BenchmarkListUsers(b *testing.B) {
	for _, backend := range []struct {
		name string
		open func(testing.TB) store.Store
	}{{"sqlite", openSQLite100k}, {"postgres", openPostgresVacuumed}} {
		b.Run(backend.name, func(b *testing.B) {
			start := time.Now()
			s := backend.open(b)
			b.Logf("%s: seeded %d users in %v", backend.name, benchUsers, time.Since(start).Round(time.Millisecond))
			enabled := true
			for _, c := range []struct {
				name string
				f    store.UserFilter
			}{
				{"page", store.UserFilter{}},
				{"page_site", store.UserFilter{Site: "site1"}},
				{"page_site_enabled", store.UserFilter{Site: "site2", Enabled: &enabled}},
				{"page_group", store.UserFilter{Group: "group07"}},
				{"page_q", store.UserFilter{Q: "number 4"}},
			} {
				b.Run(c.name, func(b *testing.B) {
					c.f.Limit = 100
					benchPages(b, s, c.f)
				})
			}
			b.Run("snapshot", func(b *testing.B) {
				ctx := context.Background()
				var users int
				for b.Loop() {
					snap, err := s.Snapshot(ctx)
					if err != nil {
						b.Fatal(err)
					}
					users = len(snap.Users)
				}
				if users != benchUsers {
					b.Fatalf("snapshot has %d users", users)
				}
			})
		})
	}
}

func openSQLite100k(tb testing.TB) store.Store {
	s := openSQLite(tb)
	storetest.SeedUsers(tb, s, benchUsers)
	return s
}

// openPostgresVacuumed seeds the directory and then does what autovacuum
// does to a live database: VACUUM (the visibility map lets counts use
// index-only scans) and ANALYZE (planner statistics).
func openPostgresVacuumed(tb testing.TB) store.Store {
	s, dsn := openPostgresDSN(tb)
	storetest.SeedUsers(tb, s, benchUsers)
	db, err := sql.Open("pgx", dsn)
	if err != nil {
		tb.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Exec("VACUUM ANALYZE"); err != nil {
		tb.Fatal(err)
	}
	return s
}

// benchPages lists f's pages in turn, each iteration one page, and reports
// the latency percentiles.
func benchPages(b *testing.B, s store.Store, f store.UserFilter) {
	ctx := context.Background()
	cursors := []string{""}
	for {
		_, next, _, err := s.ListUsers(ctx, store.UserFilter{Page: store.Page{Limit: f.Limit, Cursor: cursors[len(cursors)-1]},
			Site: f.Site, Group: f.Group, Enabled: f.Enabled, Q: f.Q})
		if err != nil {
			b.Fatal(err)
		}
		if next == "" {
			break
		}
		cursors = append(cursors, next)
	}
	var lat []time.Duration
	for i := 0; b.Loop(); i++ {
		f.Cursor = cursors[i%len(cursors)]
		t0 := time.Now()
		items, _, total, err := s.ListUsers(ctx, f)
		lat = append(lat, time.Since(t0))
		if err != nil || len(items) == 0 || total == 0 {
			b.Fatalf("page %d: %d items, total %d, %v", i, len(items), total, err)
		}
	}
	slices.Sort(lat)
	pct := func(p float64) float64 {
		return float64(lat[min(len(lat)-1, int(p*float64(len(lat))))].Microseconds()) / 1000
	}
	b.ReportMetric(pct(0.50), "p50_ms")
	b.ReportMetric(pct(0.99), "p99_ms")
	b.ReportMetric(float64(len(cursors)), "pages")
}
