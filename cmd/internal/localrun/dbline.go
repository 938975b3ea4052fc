package localrun

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"

	"example.com/pscmessages/store"
	"example.com/pscmessages/store/migrations"
)

// describeDatabase is the one line serve prints at start about a database
// the user pointed it at (DATABASE_URL or DB_HOST): which database, never
// with credentials, and what the functions will create there, since with
// DB_MIGRATE on (the default) their first request applies the migrations
// the database lacks. It connects once, within DB_CONNECT_TIMEOUT, to read
// the schema version; a database it cannot reach now gets the whole list.
func describeDatabase(ctx context.Context, getenv func(string) string) string {
	cfg, err := store.ConfigFromEnv(getenv)
	if err != nil { // checked before; kept for safety
		return "database: " + err.Error()
	}
	where := databaseName(cfg)
	if !cfg.Migrate {
		return fmt.Sprintf("database %s: DB_MIGRATE=false, so the functions create nothing there; its schema must be at version %d (go run ./cmd/pscmessages migrate)", where, migrations.Latest())
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.ConnectTimeout+cfg.QueryTimeout)
	defer cancel()
	conn, err := store.AdminConn(ctx, cfg)
	if err != nil {
		// Why not is the functions' to log, once, when they first try: the
		// same cause twice would read as two faults.
		state := "not reachable now"
		if errors.Is(err, store.ErrPermanent) {
			state = "refuses the connection now" // a login, a database or a certificate
		}
		return fmt.Sprintf("database %s (%s; the functions log why on their first request): on its first request the functions apply there whichever of migrations %s it lacks (DB_MIGRATE=false turns that off)",
			where, state, strings.Join(allMigrations(), ", "))
	}
	defer conn.Close(context.WithoutCancel(ctx))
	pending, version, err := migrations.Pending(ctx, conn)
	switch {
	case err != nil:
		return fmt.Sprintf("database %s (schema version unreadable: %v): on its first request the functions apply there whichever of migrations %s it lacks (DB_MIGRATE=false turns that off)",
			where, err, strings.Join(allMigrations(), ", "))
	case len(pending) == 0:
		return fmt.Sprintf("database %s: schema at version %d, no migrations to apply", where, version)
	case version == 0:
		return fmt.Sprintf("database %s: no schema of ours yet; the functions' first request creates their tables there with migrations %s (DB_MIGRATE=false turns that off)",
			where, strings.Join(pending, ", "))
	default:
		return fmt.Sprintf("database %s: schema at version %d; the functions' first request applies migrations %s there (DB_MIGRATE=false turns that off)",
			where, version, strings.Join(pending, ", "))
	}
}

// databaseName is `"NAME" on HOST:PORT`: no user, password or other
// parameter.
func databaseName(cfg store.Config) string {
	host, port, db := cfg.Host, cfg.Port, cfg.Database
	if cfg.ConnString != "" {
		pc, err := pgconn.ParseConfig(cfg.ConnString)
		if err != nil {
			return "named by DATABASE_URL"
		}
		host, port, db = pc.Host, int(pc.Port), pc.Database
	}
	return fmt.Sprintf("%q on %s", db, net.JoinHostPort(host, strconv.Itoa(port)))
}

// allMigrations names every migration of this build.
func allMigrations() []string {
	names, err := migrations.Names()
	if err != nil { // embedded at build time: cannot fail in a build that passed its tests
		return []string{"(" + err.Error() + ")"}
	}
	return names
}
