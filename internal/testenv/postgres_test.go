package testenv

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

func TestPostgresDBIsPrivateAndDropped(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	var first string
	t.Run("create", func(t *testing.T) {
		first = PostgresDB(t)
		second := PostgresDB(t)
		if first == second {
			t.Fatalf("two tests got the same database %s", first)
		}
		a, err := pgx.Connect(ctx, first)
		if err != nil {
			t.Fatal(err)
		}
		defer a.Close(ctx)
		if _, err := a.Exec(ctx, "CREATE TABLE mark (v text); INSERT INTO mark VALUES ('here')"); err != nil {
			t.Fatal(err)
		}
		b, err := pgx.Connect(ctx, second)
		if err != nil {
			t.Fatal(err)
		}
		defer b.Close(ctx)
		var n int
		if err := b.QueryRow(ctx, "SELECT count(*) FROM pg_tables WHERE tablename = 'mark'").Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n != 0 {
			t.Error("a table made in one test database shows in another")
		}
	})

	// After the subtest, its databases are gone.
	if c, err := pgx.Connect(ctx, first); err == nil {
		c.Close(ctx)
		t.Errorf("database %s still exists after its test ended", first)
	}
}
