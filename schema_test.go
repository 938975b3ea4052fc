package function

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"example.com/pscmessages/store/migrations"
)

// TestMigrationsOffRefusesBehindSchema: with DB_MIGRATE=false the
// function does not migrate a database that is behind, and answers 503
// rather than writing to it.
func TestMigrationsOffRefusesBehindSchema(t *testing.T) {
	url := testDB(t)
	migrated := newFixture(t, map[string]string{"DATABASE_URL": url})
	testMigrated(t, migrated)
	behind := migrations.Latest() - 1
	execSQL(t, url, "UPDATE "+migrations.VersionTable+" SET version = $1", behind)
	f := newFixture(t, map[string]string{"DATABASE_URL": url, "DB_MIGRATE": "false"})
	r := postContent(t, f.srv.URL, "into a schema that is behind")
	if r.status != http.StatusServiceUnavailable {
		t.Fatalf("POST with DB_MIGRATE=false on a schema at version %d of %d: %d %s; want 503", behind, migrations.Latest(), r.status, r.body)
	}
	if v := countRows(t, url, "SELECT version FROM "+migrations.VersionTable); v != int(behind) {
		t.Fatalf("DB_MIGRATE=false migrated the database to version %d", v)
	}
	if n := countRows(t, url, "SELECT count(*) FROM messages"); n != 0 {
		t.Fatalf("%d rows written to a schema that is behind", n)
	}
}

// TestColdStartLeavesLargeMigrationToMigrate: with DB_MIGRATE=true, a cold
// start that finds 005 (the rewrite of messages into 64-bit ids) pending on a
// table larger than a cold start may rewrite does not try it under its
// deadline (shortened here, so the real table outlasts it): every request is
// answered 500 at once, one ERROR line names the migration and the command
// that applies it, and the table is never locked or rewritten. Once the
// migration is applied (as `migrate` does), the function serves without a
// restart. Rewriting under a cold start's deadline would hold ACCESS
// EXCLUSIVE on messages until the deadline cancelled it, on every cold
// start, and answer 503 for ever.
func TestColdStartLeavesLargeMigrationToMigrate(t *testing.T) {
	ctx := context.Background()
	url := emptyDB(t)
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	// Version 4: migrations 001-004 applied as they are, then the table a
	// tutorial deployment has grown, above migrations.InlineBytes.
	scripts, err := migrations.Scripts()
	if err != nil {
		t.Fatal(err)
	}
	for _, sql := range scripts[:4] {
		if _, err := conn.Exec(ctx, sql); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := conn.Exec(ctx, `CREATE TABLE `+migrations.VersionTable+` (version int4 NOT NULL);
		INSERT INTO `+migrations.VersionTable+` VALUES (4);
		INSERT INTO messages (content) SELECT 'message ' || i || ' ' || repeat('x', 150) FROM generate_series(1, 400000) i;
		ANALYZE messages`); err != nil {
		t.Fatal(err)
	}
	var size int64
	if err := conn.QueryRow(ctx, "SELECT pg_total_relation_size('messages')").Scan(&size); err != nil {
		t.Fatal(err)
	}
	if size <= migrations.InlineBytes {
		t.Fatalf("messages is %d bytes, not over the %d a cold start migrates", size, migrations.InlineBytes)
	}
	// The deadline of a cold start, shortened so that the table outlasts it
	// (005 takes seconds here; see the migration's own figure).
	defer func(d time.Duration) { openTimeout = d }(openTimeout)
	openTimeout = 300 * time.Millisecond

	f := newFixture(t, map[string]string{"DATABASE_URL": url})
	for i := range 3 {
		start := time.Now()
		r := postContent(t, f.srv.URL, "during the pending migration")
		if r.status != 500 || !strings.Contains(string(r.body), "needs a migration") {
			t.Fatalf("request %d: %d %s, want 500 naming a migration", i, r.status, r.body)
		}
		if took := time.Since(start); took > openTimeout {
			t.Errorf("request %d took %v: it waited on the migration", i, took)
		}
	}
	logs := f.logs.String()
	if n := strings.Count(logs, `"severity":"ERROR"`); n != 1 ||
		!strings.Contains(logs, "go run ./cmd/pscmessages migrate") || !strings.Contains(logs, "005_message_ids_bigint.sql") {
		t.Fatalf("want one ERROR line naming `go run ./cmd/pscmessages migrate` and 005_message_ids_bigint.sql, got %d:\n%s", n, logs)
	}
	var version int
	var idType string
	if err := conn.QueryRow(ctx, "SELECT (SELECT version FROM "+migrations.VersionTable+"), "+
		"(SELECT data_type FROM information_schema.columns WHERE table_name = 'messages' AND column_name = 'id')").Scan(&version, &idType); err != nil {
		t.Fatal(err)
	}
	if version != 4 || idType != "integer" {
		t.Fatalf("schema version %d, id %s: the cold start migrated", version, idType)
	}

	// An administrator migrates; the function picks it up by itself.
	if err := migrations.Apply(ctx, conn, nil); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		r := postContent(t, f.srv.URL, "after the migration")
		if r.status/100 == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after migrating: %d %s, want 2xx within 15 s", r.status, r.body)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestTutorialTableKeepsRows: the messages table as the tutorial's Flask app
// created and filled it is migrated in place; its rows, a NULL content among
// them, list and read as before, beside new ones.
func TestTutorialTableKeepsRows(t *testing.T) {
	url := emptyDB(t)
	// The table exactly as the Flask app created and filled it.
	execSQL(t, url, "CREATE TABLE messages (id SERIAL PRIMARY KEY, content TEXT)")
	execSQL(t, url, "INSERT INTO messages (content) VALUES ('from flask'), (NULL), ('another')")
	f := newFixture(t, map[string]string{"DATABASE_URL": url})
	postContent(t, f.srv.URL, "from go")
	got := listContents(t, f.srv.URL)
	want := []any{"from flask", "", "another", "from go"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("GET / = %q, want %q", got, want)
	}
	r := do(t, "GET", f.srv.URL+"/messages/1", "", nil)
	if r.status != 200 || r.json(t)["content"] != "from flask" {
		t.Fatalf("legacy row: %d %s", r.status, r.body)
	}
}

// TestConcurrentColdStarts: eight instances starting at once on one database,
// each with concurrent first requests, migrate it once to the current
// version and store every message.
func TestConcurrentColdStarts(t *testing.T) {
	url := emptyDB(t)
	const instances = 8
	var wg sync.WaitGroup
	for i := range instances {
		f := newFixture(t, map[string]string{"DATABASE_URL": url})
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Each instance's first requests arrive together.
			var inner sync.WaitGroup
			for j := range 4 {
				inner.Add(1)
				go func() {
					defer inner.Done()
					if r := postContent(t, f.srv.URL, fmt.Sprintf("i%d-%d", i, j)); r.status != 200 {
						t.Errorf("instance %d: %d %s", i, r.status, r.body)
					}
				}()
			}
			inner.Wait()
		}()
	}
	wg.Wait()
	if n := countRows(t, url, "SELECT count(*) FROM messages"); n != instances*4 {
		t.Fatalf("%d rows, want %d", n, instances*4)
	}
	if v := countRows(t, url, "SELECT version FROM "+migrations.VersionTable); v != int(migrations.Latest()) {
		t.Fatalf("schema version %d", v)
	}
}
