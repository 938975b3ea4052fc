package store_test

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/jackc/tern/v2/migrate"

	"example.com/pscmessages/store"
	"example.com/pscmessages/store/migrations"
)

// TestBehindSchemaIsRefused: with migrations off, a database migrated only to
// an earlier version (or recording one) fails Open with ErrSchema, naming
// what is missing, and Open changes nothing.
func TestBehindSchemaIsRefused(t *testing.T) {
	ctx := testContext(t)
	latest := migrations.Latest()
	if latest < 2 {
		t.Fatalf("%d migrations: nothing to be behind", latest)
	}
	type tc struct {
		name     string
		migrate  int32 // migrate to this version
		record   int32 // then record this version, if > 0
		mentions []string
	}
	var cases []tc
	for v := range latest {
		cases = append(cases, tc{name: fmt.Sprintf("migrated to %d of %d", v, latest), migrate: v})
	}
	// Every table and privilege present, only the recorded version behind:
	// what the version check alone must catch.
	cases = append(cases, tc{name: "records an earlier version", migrate: latest, record: latest - 1,
		mentions: []string{strconv.Itoa(int(latest - 1)), strconv.Itoa(int(latest))}})
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			name := fmt.Sprintf("s%d", dbSeq.Add(1))
			if err := cluster.CreateDatabase(ctx, name); err != nil {
				t.Fatal(err)
			}
			url := cluster.SuperuserURL(name)
			conn := dbConn(t, url)
			m, err := migrate.NewMigrator(ctx, conn, migrations.VersionTable)
			if err != nil {
				t.Fatal(err)
			}
			if err := m.LoadMigrations(os.DirFS("migrations")); err != nil {
				t.Fatal(err)
			}
			if err := m.MigrateTo(ctx, c.migrate); err != nil {
				t.Fatal(err)
			}
			version := c.migrate
			if c.record > 0 {
				if _, err := conn.Exec(ctx, "UPDATE "+migrations.VersionTable+" SET version = $1", c.record); err != nil {
					t.Fatal(err)
				}
				version = c.record
			}
			st, err := store.Open(ctx, store.Config{ConnString: url, Migrate: false})
			if err == nil {
				st.Close()
				t.Fatalf("Open with migrations off accepted a schema at version %d of %d", version, latest)
			}
			if !errors.Is(err, store.ErrSchema) {
				t.Fatalf("Open: %v, want ErrSchema", err)
			}
			t.Logf("Open: %v", err)
			detail := strings.TrimPrefix(err.Error(), store.ErrSchema.Error())
			if len(strings.TrimLeft(detail, ": ")) < 10 {
				t.Fatalf("the schema error %q does not say what is missing", err)
			}
			for _, s := range c.mentions {
				if !strings.Contains(detail, s) {
					t.Errorf("the schema error %q does not mention %q", err, s)
				}
			}
			var now int32
			if err := conn.QueryRow(ctx, "SELECT version FROM "+migrations.VersionTable).Scan(&now); err != nil || now != version {
				t.Fatalf("after Open with migrations off the version is %d (%v), was %d", now, err, version)
			}
		})
	}
}
