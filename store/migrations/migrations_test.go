package migrations_test

import (
	"fmt"
	"regexp"
	"strings"
	"testing"

	"example.com/pscmessages/store/migrations"
)

// TestEachMigrationCommitsOnItsOwn: every migration is its own transaction.
// A later migration that fails (here 006, whose index cannot be built on a
// view squatting its table's name) leaves the earlier ones applied and
// recorded, and the next run goes on from there. Sharing one transaction,
// a failure (or a cold start's deadline) would undo them all, and 005's
// ACCESS EXCLUSIVE lock on messages would last through 006's backfill.
func TestEachMigrationCommitsOnItsOwn(t *testing.T) {
	ctx := testContext(t)
	name := fmt.Sprintf("s%d", dbSeq.Add(1))
	if err := cluster.CreateDatabase(ctx, name); err != nil {
		t.Fatal(err)
	}
	url := cluster.SuperuserURL(name)
	conn := connect(t, url)
	if _, err := conn.Exec(ctx, "CREATE VIEW idempotency_keys AS SELECT 1 AS key"); err != nil {
		t.Fatal(err)
	}
	err := migrations.Apply(ctx, conn, nil)
	if err == nil || !strings.Contains(err.Error(), "006_idempotency_keys") {
		t.Fatalf("Migrate = %v, want 006 to fail", err)
	}
	if v := queryInt(t, url, "SELECT version FROM "+migrations.VersionTable); v != 5 {
		t.Fatalf("schema version %d after 006 failed, want 5 (001-005 committed)", v)
	}
	// 005 is in place: 64-bit ids.
	if n := queryInt(t, url, "SELECT count(*) FROM information_schema.columns WHERE table_name = 'messages' AND column_name = 'id' AND data_type = 'bigint'"); n != 1 {
		t.Fatalf("messages.id is not bigint: 005 was not kept")
	}
	// 005's lock on messages ended with its transaction.
	if n := queryInt(t, url, "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation WHERE c.relname = 'messages'"); n != 0 {
		t.Fatalf("%d locks still held on messages", n)
	}
	if _, err := conn.Exec(ctx, "DROP VIEW idempotency_keys"); err != nil {
		t.Fatal(err)
	}
	if err := migrations.Apply(ctx, conn, nil); err != nil {
		t.Fatal(err)
	}
	if v := queryInt(t, url, "SELECT version FROM "+migrations.VersionTable); v != int(migrations.Latest()) {
		t.Fatalf("schema version %d, want %d", v, migrations.Latest())
	}
}

// TestMigrationsMarkWhatTheyScan: every migration that rewrites or reads a
// whole existing table (an index build, a backfill, a column type change)
// names it with "-- scans:", so a cold start never runs it on a large table.
func TestMigrationsMarkWhatTheyScan(t *testing.T) {
	scripts, err := migrations.Scripts()
	if err != nil {
		t.Fatal(err)
	}
	scans := regexp.MustCompile(`(?im)^\s*(CREATE (UNIQUE )?INDEX|UPDATE|INSERT INTO \S+ \([^)]*\)\s*SELECT|ALTER TABLE \S+ ALTER COLUMN \S+ TYPE)`)
	marked := 0
	for _, sql := range scripts {
		name, _, _ := strings.Cut(sql, "\n")
		got := migrations.Scans(sql)
		if scans.MatchString(sql) && len(got) == 0 {
			t.Errorf("%s scans a table but has no -- scans: line", name)
		}
		marked += min(len(got), 1)
	}
	if marked < 4 {
		t.Errorf("%d migrations marked, want at least 002, 004, 005 and 006", marked)
	}
}
