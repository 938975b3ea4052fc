package migrations

import (
	"context"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
)

// Pending returns the names of the migrations this build would
// apply to conn's database, oldest first (all of them where the version
// table does not exist yet), and the version it found. It reads and
// changes nothing else, so a local runner can say, before the first
// request, what the functions will create in a database it was pointed at.
func Pending(ctx context.Context, conn *pgx.Conn) (pending []string, version int32, err error) {
	var exists bool
	if err := conn.QueryRow(ctx, "SELECT to_regclass($1) IS NOT NULL", pgx.Identifier{VersionTable}.Sanitize()).Scan(&exists); err != nil {
		return nil, 0, fmt.Errorf("looking for %s: %w", VersionTable, err)
	}
	if exists {
		if err := conn.QueryRow(ctx, "SELECT version FROM "+pgx.Identifier{VersionTable}.Sanitize()).Scan(&version); err != nil {
			return nil, 0, fmt.Errorf("reading %s: %w", VersionTable, err)
		}
	}
	names, err := Names()
	if err != nil {
		return nil, 0, err
	}
	if int(version) < len(names) {
		pending = names[max(version, 0):]
	}
	return pending, version, nil
}

// Names names this build's migrations, oldest first, as their
// files do without .sql: "001_messages", ...
func Names() ([]string, error) {
	m, err := load(context.Background())
	if err != nil {
		return nil, err
	}
	names := make([]string, len(m.Migrations))
	for i, mig := range m.Migrations {
		names[i] = strings.TrimSuffix(mig.Name, ".sql")
	}
	return names, nil
}
