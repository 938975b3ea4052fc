package store

import (
	"context"
	"embed"
	"fmt"
	"io/fs"
	"regexp"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/tern/v2/migrate"
)

//go:embed migrations/*.sql
var migrationFiles embed.FS

// VersionTable records the applied schema version (tern's bookkeeping).
const VersionTable = "messages_schema_version"

// MigrationLock is the advisory lock key that serialises migrations. It is
// tern's own key, so this build and an older one that still migrates with
// tern's session lock wait for each other.
const MigrationLock int64 = 9628173550095224

// Migrate applies every pending migration on conn, each in its own
// transaction that first takes pg_advisory_xact_lock(MigrationLock), reads
// the recorded version, applies the next migration and records its version,
// as tern does: instances cold-starting together apply each migration once,
// the others wait, then find nothing to do.
//
// One transaction per migration, not one for all: a lock a migration takes
// (005's ACCESS EXCLUSIVE on messages) ends with it instead of lasting
// through the next ones (006's backfill), and a run cut short (the 30 s
// deadline of a cold start with DB_MIGRATE=true, a lost connection) keeps
// the migrations it finished, so the next run goes on from there rather
// than starting over every time.
//
// Why a transaction-scoped lock and not tern's own Migrate: tern holds a
// session-level advisory lock (pg_advisory_lock, then pg_advisory_unlock in a
// later statement). Behind a transaction-mode pooler (DB_POOLER=transaction)
// those two statements may run on different server connections, which
// leaves the lock held on a pooled connection, where it blocks the next
// migration or lets two run at once. A lock that ends with its transaction
// needs no session, so migrations work the same direct and through a
// pooler, and a failed migration leaves nothing of itself half-applied. Tern
// still loads and renders the migration files and its version table is kept
// as it was, so databases migrated by earlier builds carry on. Migrations
// marked "---- tern: disable-tx ----" (say, CREATE INDEX CONCURRENTLY) cannot
// run this way and are refused.
func Migrate(ctx context.Context, conn *pgx.Conn) error {
	return migrateTo(ctx, conn, -1)
}

// migrateTo migrates up to version target; a negative target means the
// latest. It never migrates down.
func migrateTo(ctx context.Context, conn *pgx.Conn, target int32) error {
	m, err := loadMigrations(ctx)
	if err != nil {
		return err
	}
	for _, mig := range m.Migrations {
		if disableTx.MatchString(mig.UpSQL) {
			return fmt.Errorf("migration %s is marked tern: disable-tx, which Migrate cannot run in its transaction", mig.Name)
		}
	}
	if target < 0 || int(target) > len(m.Migrations) {
		target = int32(len(m.Migrations))
	}
	for {
		done, err := migrateNext(ctx, conn, m.Migrations, target)
		if err != nil {
			return fmt.Errorf("applying migrations: %w", err)
		}
		if done {
			return nil
		}
	}
}

// migrateNext applies, in one transaction under the migration lock, the
// migration after the recorded version, unless that version has reached
// target (done). The version is read under the lock, so a migration another
// instance applied meanwhile is not applied again.
func migrateNext(ctx context.Context, conn *pgx.Conn, migrations []*migrate.Migration, target int32) (done bool, err error) {
	err = pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1::bigint)", MigrationLock); err != nil {
			return fmt.Errorf("waiting for the migration lock: %w", err)
		}
		vt := pgx.Identifier{VersionTable}.Sanitize()
		// Tern's version table, created as tern creates it. No arguments:
		// pgx sends this as one simple-protocol query.
		if _, err := tx.Exec(ctx, "CREATE TABLE IF NOT EXISTS "+vt+" (version int4 NOT NULL);\n"+
			"INSERT INTO "+vt+" (version) SELECT 0 WHERE NOT EXISTS (SELECT FROM "+vt+")"); err != nil {
			return fmt.Errorf("preparing %s: %w", VersionTable, err)
		}
		var current int32
		if err := tx.QueryRow(ctx, "SELECT version FROM "+vt).Scan(&current); err != nil {
			return fmt.Errorf("reading %s: %w", VersionTable, err)
		}
		if current < 0 || int(current) > len(migrations) {
			return fmt.Errorf("schema version %d is newer than this build's %d migrations", current, len(migrations))
		}
		if current >= target {
			done = true
			return nil
		}
		mig := migrations[current]
		if _, err := tx.Exec(ctx, mig.UpSQL); err != nil {
			return fmt.Errorf("migration %s: %w", mig.Name, err)
		}
		// As tern does: a migration's SET must not outlive it.
		if _, err := tx.Exec(ctx, "RESET ALL"); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, "UPDATE "+vt+" SET version = $1::int4", current+1)
		return err
	})
	return done, err
}

// loadMigrations reads the embedded migrations through tern. It needs no
// connection: tern takes no lock and touches no table without one.
func loadMigrations(ctx context.Context) (*migrate.Migrator, error) {
	m, err := migrate.NewMigrator(ctx, nil, VersionTable)
	if err != nil {
		return nil, err
	}
	if err := m.LoadMigrations(migrationsFS()); err != nil {
		return nil, fmt.Errorf("loading migrations: %w", err)
	}
	return m, nil
}

// disableTx is tern's marker for a migration that must run outside a transaction.
var disableTx = regexp.MustCompile(`(?m)^---- tern: disable-tx ----$`)

// Migrations returns the migrations' up SQL in order, for printing.
func Migrations() ([]string, error) {
	m, err := loadMigrations(context.Background())
	if err != nil {
		return nil, err
	}
	out := make([]string, 0, len(m.Migrations))
	for _, mig := range m.Migrations {
		out = append(out, fmt.Sprintf("-- %s\n%s", mig.Name, mig.UpSQL))
	}
	return out, nil
}

func migrationsFS() fs.FS {
	sub, err := fs.Sub(migrationFiles, "migrations")
	if err != nil {
		panic(err) // the embedded folder is fixed at build time
	}
	return sub
}

// SchemaVersion is the schema version this build migrates to and expects.
func SchemaVersion() int32 { return latestVersion() }

// latestVersion is the schema version this build expects.
func latestVersion() int32 {
	entries, _ := fs.Glob(migrationsFS(), "*.sql")
	return int32(len(entries))
}

// prepareSchema migrates, or with migrations off checks that an administrator
// did and that this role may use the tables, so a missing grant is reported
// once, clearly, instead of as a failure on every request.
func (s *Store) prepareSchema(ctx context.Context) error {
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return classify(fmt.Errorf("connecting: %w", err))
	}
	defer conn.Release()
	if s.cfg.Migrate {
		if err := Migrate(ctx, conn.Conn()); err != nil {
			if isTransient(err) {
				return classify(err)
			}
			return fmt.Errorf("%w: %w", ErrSchema, err)
		}
	}
	privs := FunctionPrivileges()
	if s.cfg.ReplayOnly {
		privs = ReplayPrivileges()
	}
	return checkSchema(ctx, conn.Conn(), privs)
}

// checkSchema verifies the privileges the store uses, then the schema version.
func checkSchema(ctx context.Context, conn *pgx.Conn, privs []Privilege) error {
	role := conn.Config().User
	missing, err := missingOf(ctx, conn, role, privs)
	switch {
	case err != nil && isTransient(err):
		return classify(err)
	case err != nil:
		return fmt.Errorf("%w: %w", ErrSchema, err)
	case len(missing) > 0:
		names := make([]string, len(missing))
		for i, p := range missing {
			names[i] = p.String()
		}
		return fmt.Errorf("%w: role %q lacks %s; run the migrations and grants (go run ./cmd/pscmessages migrate -grant ROLE)",
			ErrSchema, role, strings.Join(names, ", "))
	}
	var version int32
	err = conn.QueryRow(ctx, "SELECT version FROM "+VersionTable).Scan(&version)
	switch {
	case err != nil && isTransient(err):
		return classify(fmt.Errorf("reading schema version: %w", err))
	case err != nil:
		return fmt.Errorf("%w: reading schema version: %w", ErrSchema, err)
	case version < latestVersion():
		return fmt.Errorf("%w: schema version %d, this build needs %d; run the migrations", ErrSchema, version, latestVersion())
	}
	return nil
}
