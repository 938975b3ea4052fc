package migrations

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"regexp"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/tern/v2/migrate"
)

//go:embed *.sql
var files embed.FS

// VersionTable records the applied schema version (tern's bookkeeping).
const VersionTable = "messages_schema_version"

// Lock is the advisory lock key that serialises migrations. It is
// tern's own key, so this build and an older one that still migrates with
// tern's session lock wait for each other.
const Lock int64 = 9628173550095224

// Apply applies every pending migration on conn, each in its own
// transaction that first takes pg_advisory_xact_lock(Lock), reads
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
//
// Apply applies every migration, however large the tables it scans: it is
// for `go run ./cmd/pscmessages migrate`, which has no deadline. A cold start
// with DB_MIGRATE=true uses [ApplyInline], which leaves a migration that
// scans large tables (see [InlineBytes]) to that command.
//
// report, when not nil, is called before each migration (and when it has to
// wait for the migration lock) and after it, so that an operator sees a long
// migration start, wait and end.
func Apply(ctx context.Context, conn *pgx.Conn, report func(Step)) error {
	return migrateTo(ctx, conn, -1, migrateOptions{report: report})
}

// ApplyInline is what a cold start with DB_MIGRATE=true applies: [Apply],
// except that it refuses, with an error wrapping [ErrOffline] before it
// takes the lock, a pending migration whose tables exceed [InlineBytes].
func ApplyInline(ctx context.Context, conn *pgx.Conn) error {
	return migrateTo(ctx, conn, -1, migrateOptions{inline: true})
}

// Step is what [Apply] reports of one migration: it
// is about to be applied (Took zero), it waits for another migrator (Waiting,
// with that migrator's backend pid when PostgreSQL tells it), or it was
// applied in Took.
type Step struct {
	Name string
	// Scans names the tables the migration rewrites or reads whole, and
	// Bytes their size (pg_total_relation_size) before it ran.
	Scans      []string
	Bytes      int64
	Waiting    bool
	WaitingPID int32
	Took       time.Duration
}

// InlineBytes is the most a migration marked "-- scans: TABLE" may have to
// read (pg_total_relation_size of its tables together) to be applied by a
// cold start with DB_MIGRATE=true: 64 MiB, a rewrite that ends far inside
// the deadline a cold start has to open the pool (store/MIGRATIONS.md says
// how long it takes). A larger one is left to `go run ./cmd/pscmessages
// migrate`: under the cold start's deadline it would be cancelled and
// rolled back on every attempt, each time after holding its locks for the
// whole deadline.
const InlineBytes int64 = 64 << 20

// ErrOffline marks a pending migration that scans tables too large for a
// cold start to migrate; see [InlineBytes]. Retrying does not help: an
// administrator runs `migrate`, and the next attempt (the function opens
// its store again every 10 s) finds it done.
var ErrOffline = errors.New("a pending migration must be applied with `go run ./cmd/pscmessages migrate`")

// scansMarker is the line by which a migration names the tables it rewrites
// or reads whole: "-- scans: messages" or "-- scans: messages, dead_letters".
var scansMarker = regexp.MustCompile(`(?m)^-- scans: ([a-z_]+(?:, *[a-z_]+)*)\s*$`)

// migrationScans returns the tables a migration marks as scanned.
func migrationScans(sql string) []string {
	var out []string
	for _, m := range scansMarker.FindAllStringSubmatch(sql, -1) {
		for _, t := range strings.Split(m[1], ",") {
			out = append(out, strings.TrimSpace(t))
		}
	}
	return out
}

type migrateOptions struct {
	// inline refuses, with ErrOffline, a migration whose scanned
	// tables exceed InlineBytes.
	inline bool
	report func(Step)
}

// migrateTo migrates up to version target; a negative target means the
// latest. It never migrates down.
func migrateTo(ctx context.Context, conn *pgx.Conn, target int32, opts migrateOptions) error {
	m, err := load(ctx)
	if err != nil {
		return err
	}
	for _, mig := range m.Migrations {
		if disableTx.MatchString(mig.UpSQL) {
			return fmt.Errorf("migration %s is marked tern: disable-tx, which cannot run in the transaction Apply gives each migration", mig.Name)
		}
	}
	if target < 0 || int(target) > len(m.Migrations) {
		target = int32(len(m.Migrations))
	}
	if opts.inline {
		// Before queueing for the lock: while `migrate` applies a large
		// migration, a cold start would otherwise wait out its deadline
		// behind it, on every attempt.
		if err := checkInline(ctx, conn, m.Migrations, target); err != nil {
			return err
		}
	}
	for {
		done, err := migrateNext(ctx, conn, m.Migrations, target, opts)
		if err != nil {
			if errors.Is(err, ErrOffline) {
				return err
			}
			return fmt.Errorf("applying migrations: %w", err)
		}
		if done {
			return nil
		}
	}
}

// checkInline returns an ErrOffline error for the first pending
// migration (up to target) that scans too much for a cold start.
func checkInline(ctx context.Context, conn *pgx.Conn, migrations []*migrate.Migration, target int32) error {
	current, err := recordedVersion(ctx, conn)
	if err != nil {
		return err
	}
	for v := max(current, 0); v < target && int(v) < len(migrations); v++ {
		if err := inlineAllowed(ctx, conn, migrations[v]); err != nil {
			return err
		}
	}
	return nil
}

// recordedVersion reads the schema version without the lock, 0 before the
// first migration.
func recordedVersion(ctx context.Context, conn *pgx.Conn) (int32, error) {
	var v int32
	err := conn.QueryRow(ctx, "SELECT coalesce((SELECT version FROM "+pgx.Identifier{VersionTable}.Sanitize()+"), 0)").Scan(&v)
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "42P01" { // undefined_table
		return 0, nil
	}
	return v, err
}

// scannedBytes is the size of the tables a migration scans, as they are now.
func scannedBytes(ctx context.Context, q interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}, tables []string) (int64, error) {
	var n int64
	err := q.QueryRow(ctx, `SELECT coalesce(sum(pg_total_relation_size(c)), 0)::int8
		FROM unnest($1::text[]) t, LATERAL (SELECT to_regclass(t) AS c) r WHERE c IS NOT NULL`, tables).Scan(&n)
	return n, err
}

// inlineAllowed refuses a migration whose scanned tables are too large for
// a cold start, naming it, the command that applies it, and the migrator
// applying it now if there is one.
func inlineAllowed(ctx context.Context, conn *pgx.Conn, mig *migrate.Migration) error {
	tables := migrationScans(mig.UpSQL)
	if len(tables) == 0 {
		return nil
	}
	n, err := scannedBytes(ctx, conn, tables)
	if err != nil || n <= InlineBytes {
		return err
	}
	busy := ""
	if pid, err := migrationLockHolder(ctx, conn); err == nil && pid != 0 {
		busy = fmt.Sprintf(" (a migrator, backend pid %d, holds the migration lock now)", pid)
	}
	return &offlineError{msg: fmt.Sprintf(
		"migration %s scans %s (%d MiB), more than a cold start applies (%d MiB): run `go run ./cmd/pscmessages migrate` to apply it%s; "+
			"until then every request is answered 500, and the function checks again every 10 s (store/MIGRATIONS.md)",
		mig.Name, strings.Join(tables, ", "), n>>20, InlineBytes>>20, busy)}
}

// migrationLockHolder is the backend pid holding Lock, 0 if none.
func migrationLockHolder(ctx context.Context, conn *pgx.Conn) (int32, error) {
	var pid int32
	err := conn.QueryRow(ctx, `SELECT coalesce((SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted
		AND ((classid::int8 << 32) | objid::int8) = $1::int8 AND objsubid = 1 LIMIT 1), 0)`, Lock).Scan(&pid)
	return pid, err
}

// migrateNext applies, in one transaction under the migration lock, the
// migration after the recorded version, unless that version has reached
// target (done). The version is read under the lock, so a migration another
// instance applied meanwhile is not applied again.
func migrateNext(ctx context.Context, conn *pgx.Conn, migrations []*migrate.Migration, target int32, opts migrateOptions) (done bool, err error) {
	var applied *Step
	defer func() {
		if applied != nil && err == nil && opts.report != nil {
			opts.report(*applied) // committed
		}
	}()
	err = pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		var locked bool
		if err := tx.QueryRow(ctx, "SELECT pg_try_advisory_xact_lock($1::bigint)", Lock).Scan(&locked); err != nil {
			return fmt.Errorf("taking the migration lock: %w", err)
		}
		if !locked {
			if opts.report != nil {
				pid, _ := migrationLockHolder(ctx, conn)
				opts.report(Step{Waiting: true, WaitingPID: pid})
			}
			if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1::bigint)", Lock); err != nil {
				return fmt.Errorf("waiting for the migration lock: %w", err)
			}
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
		if opts.inline {
			if err := inlineAllowed(ctx, conn, mig); err != nil {
				return err
			}
		}
		step := Step{Name: mig.Name, Scans: migrationScans(mig.UpSQL)}
		if opts.report != nil {
			if len(step.Scans) > 0 {
				step.Bytes, _ = scannedBytes(ctx, tx, step.Scans)
			}
			opts.report(step)
		}
		start := time.Now()
		if _, err := tx.Exec(ctx, mig.UpSQL); err != nil {
			return fmt.Errorf("migration %s: %w", mig.Name, err)
		}
		applied, step.Took = &step, max(time.Since(start), time.Nanosecond)
		// As tern does: a migration's SET must not outlive it.
		if _, err := tx.Exec(ctx, "RESET ALL"); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, "UPDATE "+vt+" SET version = $1::int4", current+1)
		return err
	})
	return done, err
}

// load reads the embedded migrations through tern. It needs no
// connection: tern takes no lock and touches no table without one.
func load(ctx context.Context) (*migrate.Migrator, error) {
	m, err := migrate.NewMigrator(ctx, nil, VersionTable)
	if err != nil {
		return nil, err
	}
	if err := m.LoadMigrations(files); err != nil {
		return nil, fmt.Errorf("loading migrations: %w", err)
	}
	return m, nil
}

// disableTx is tern's marker for a migration that must run outside a transaction.
var disableTx = regexp.MustCompile(`(?m)^---- tern: disable-tx ----$`)

// Scripts returns each migration's up SQL in order, after a comment line
// naming it, for printing.
func Scripts() ([]string, error) {
	m, err := load(context.Background())
	if err != nil {
		return nil, err
	}
	out := make([]string, 0, len(m.Migrations))
	for _, mig := range m.Migrations {
		out = append(out, fmt.Sprintf("-- %s\n%s", mig.Name, mig.UpSQL))
	}
	return out, nil
}

// Latest is the schema version this build migrates to and expects.
func Latest() int32 {
	entries, _ := fs.Glob(files, "*.sql")
	return int32(len(entries))
}

// offlineError is an [ErrOffline] failure whose message names the migration,
// its tables and the command that applies it.
type offlineError struct{ msg string }

func (e *offlineError) Error() string        { return e.msg }
func (e *offlineError) Is(target error) bool { return target == ErrOffline }
