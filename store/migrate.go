package store

import (
	"context"
	"embed"
	"fmt"
	"io/fs"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/tern/v2/migrate"
)

//go:embed migrations/*.sql
var migrationFiles embed.FS

// VersionTable records the applied schema version (tern's bookkeeping).
const VersionTable = "messages_schema_version"

// Migrate applies every pending migration on conn. Tern holds a PostgreSQL
// advisory lock while it works, so instances cold-starting together apply each
// migration once and the others wait, then find nothing to do.
func Migrate(ctx context.Context, conn *pgx.Conn) error {
	m, err := newMigrator(ctx, conn)
	if err != nil {
		return err
	}
	if err := m.Migrate(ctx); err != nil {
		return fmt.Errorf("applying migrations: %w", err)
	}
	return nil
}

// Migrations returns the migrations' up SQL in order, for printing.
func Migrations() ([]string, error) {
	m, err := migrate.NewMigrator(context.Background(), nil, VersionTable)
	if err != nil {
		return nil, err
	}
	if err := m.LoadMigrations(migrationsFS()); err != nil {
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

func newMigrator(ctx context.Context, conn *pgx.Conn) (*migrate.Migrator, error) {
	m, err := migrate.NewMigrator(ctx, conn, VersionTable)
	if err != nil {
		return nil, fmt.Errorf("preparing %s: %w", VersionTable, err)
	}
	if err := m.LoadMigrations(migrationsFS()); err != nil {
		return nil, fmt.Errorf("loading migrations: %w", err)
	}
	return m, nil
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
	return checkSchema(ctx, conn.Conn())
}

// checkSchema verifies the privileges the function uses, then the schema version.
func checkSchema(ctx context.Context, conn *pgx.Conn) error {
	role := conn.Config().User
	missing, err := MissingPrivileges(ctx, conn, role)
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
		return fmt.Errorf("%w: role %q lacks %s; run the migrations and grants (go run ./cmd migrate -grant ROLE)",
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
