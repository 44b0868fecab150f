package httpapi

// HTTP-level benchmarks for the README (go test -run '^$' -bench . ./internal/httpapi/):
// a 10,000-line CSV import, GET /v1/users/{id}, a page of GET /v1/users
// (with p50 and p99) and a full sync snapshot, on a 100,000-user
// directory in SQLite.

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/services/users/internal/directory"
	"github.com/postern/postern/services/users/internal/store/storetest"
)

const benchDirectory = 100_000

func BenchmarkImport10k(b *testing.B) {
	hash, err := directory.HashPassword("bench-password-1")
	if err != nil {
		b.Fatal(err)
	}
	var csv strings.Builder
	csv.WriteString("username,description,password_hash,site,aliases\n")
	for i := range 10_000 {
		fmt.Fprintf(&csv, "user%05d,User %d,\"%s\",hq,alias%05d@hq.example.org\n", i, i, hash, i)
	}
	body := csv.String()
	for b.Loop() {
		b.StopTimer()
		s := newTestServer(b, func(o *Options) { o.MaxBodyBytes = 0; o.Logger = slog.New(slog.DiscardHandler) })
		s.create("/v1/sites", `{"name":"hq","domains":["hq.example.org"]}`)
		b.StartTimer()
		r := s.do("POST", "/v1/users/import", s.admin, "text/csv", body)
		if r.status != http.StatusOK {
			b.Fatalf("import: %d %.500s", r.status, r.body)
		}
	}
	b.ReportMetric(10_000, "rows/op")
}

func BenchmarkGetUser(b *testing.B) {
	s := newTestServer(b)
	storetest.SeedUsers(b, s.store, benchDirectory)
	u, err := s.store.GetUserByUsername(b.Context(), "user050000")
	if err != nil {
		b.Fatal(err)
	}
	path := s.srv.URL + "/v1/users/" + u.ID
	client := s.srv.Client()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			req, _ := http.NewRequest("GET", path, nil)
			req.Header.Set("Authorization", "Bearer "+s.admin)
			resp, err := client.Do(req)
			if err != nil {
				b.Error(err)
				return
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				b.Errorf("status %d", resp.StatusCode)
				return
			}
		}
	})
}

func BenchmarkListUsers(b *testing.B) {
	s := newTestServer(b)
	storetest.SeedUsers(b, s.store, benchDirectory)
	var lat []time.Duration
	cursor := ""
	for b.Loop() {
		path := "/v1/users?limit=100"
		if cursor != "" {
			path += "&cursor=" + cursor
		}
		start := time.Now()
		r := s.do("GET", path, s.admin, "", "")
		lat = append(lat, time.Since(start))
		if r.status != http.StatusOK {
			b.Fatalf("list: %d %s", r.status, r.body)
		}
		var page struct {
			NextCursor string `json:"next_cursor"`
		}
		_ = json.Unmarshal(r.body, &page)
		cursor = page.NextCursor
	}
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
}

func BenchmarkSyncSnapshot(b *testing.B) {
	s := newTestServer(b)
	storetest.SeedUsers(b, s.store, benchDirectory)
	agent := s.mkToken(directory.RoleSiteAgent, "site0", nil)
	var size int
	for b.Loop() {
		r := s.do("GET", "/v1/sync?cursor=0", agent, "", "")
		if r.status != http.StatusOK {
			b.Fatalf("sync: %d %.500s", r.status, r.body)
		}
		size = len(r.body)
	}
	b.ReportMetric(float64(size)/(1<<20), "MiB/snapshot")
}
