package storetest

import (
	"context"
	"fmt"
	"testing"

	"github.com/postern/postern/services/users/internal/directory"
	"github.com/postern/postern/services/users/internal/store"
)

// Seed sizes.
const (
	SeedSites  = 4
	SeedGroups = 100
	seedBatch  = 5000
)

// SeedUsers fills an empty store with a directory of n users for
// benchmarks: SeedSites sites (site0…), SeedGroups groups (group00…), and
// users user000000… with one alias each, spread over the sites, every
// tenth in a group, every tenth disabled. It writes in transactions of
// seedBatch users through Tx.CreateUsers.
func SeedUsers(tb testing.TB, s store.Store, n int) {
	tb.Helper()
	ctx := context.Background()
	audit := func(ctx context.Context, tx store.Tx) error {
		return tx.Audit(ctx, &directory.AuditEntry{Actor: "seed", Action: "import"})
	}
	err := s.Update(ctx, func(tx store.Tx) error {
		for i := range SeedSites {
			if err := tx.CreateSite(ctx, newSite(fmt.Sprintf("site%d", i))); err != nil {
				return err
			}
		}
		for i := range SeedGroups {
			if err := tx.CreateGroup(ctx, &directory.Group{Name: fmt.Sprintf("group%02d", i)}); err != nil {
				return err
			}
		}
		return audit(ctx, tx)
	})
	if err != nil {
		tb.Fatal(err)
	}
	for start := 0; start < n; start += seedBatch {
		us := make([]*directory.User, 0, seedBatch)
		for i := start; i < min(n, start+seedBatch); i++ {
			u := newUser(fmt.Sprintf("user%06d", i), fmt.Sprintf("site%d", i%SeedSites), fmt.Sprintf("alias%06d@example.net", i))
			u.DisplayName = fmt.Sprintf("User Number %d", i)
			if i%10 == 0 {
				u.Groups = []string{fmt.Sprintf("group%02d", (i/10)%SeedGroups)}
			}
			u.Enabled = i%10 != 5
			us = append(us, u)
		}
		if err := s.Update(ctx, func(tx store.Tx) error {
			if err := tx.CreateUsers(ctx, us); err != nil {
				return err
			}
			return audit(ctx, tx)
		}); err != nil {
			tb.Fatal(err)
		}
	}
}
