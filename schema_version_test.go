package function

import (
	"net/http"
	"testing"

	"example.com/pscmessages/store"
)

// TestMigrationsOffRefusesBehindSchema: with DB_MIGRATE=false the
// function does not migrate a database that is behind, and answers 503
// rather than writing to it.
func TestMigrationsOffRefusesBehindSchema(t *testing.T) {
	url := testDB(t)
	migrated := newFixture(t, map[string]string{"DATABASE_URL": url})
	testMigrated(t, migrated)
	behind := store.SchemaVersion() - 1
	execSQL(t, url, "UPDATE "+store.VersionTable+" SET version = $1", behind)
	f := newFixture(t, map[string]string{"DATABASE_URL": url, "DB_MIGRATE": "false"})
	r := postContent(t, f.srv.URL, "into a schema that is behind")
	if r.status != http.StatusServiceUnavailable {
		t.Fatalf("POST with DB_MIGRATE=false on a schema at version %d of %d: %d %s; want 503", behind, store.SchemaVersion(), r.status, r.body)
	}
	if v := countRows(t, url, "SELECT version FROM "+store.VersionTable); v != int(behind) {
		t.Fatalf("DB_MIGRATE=false migrated the database to version %d", v)
	}
	if n := countRows(t, url, "SELECT count(*) FROM messages"); n != 0 {
		t.Fatalf("%d rows written to a schema that is behind", n)
	}
}
