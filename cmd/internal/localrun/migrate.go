package localrun

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"example.com/pscmessages/store"
	"example.com/pscmessages/store/deadletter"
	"example.com/pscmessages/store/grants"
	"example.com/pscmessages/store/migrations"
)

// runMigrate is `go run ./cmd/pscmessages migrate`: an administrator applies the schema
// migrations and grants the deployed functions' database roles exactly the
// privileges they use. The functions run with DB_MIGRATE=false, so they never
// need to own or create anything.
func runMigrate(ctx context.Context, args []string) error {
	return migrateCmd(ctx, args, os.Getenv, os.Stdout, os.Stderr)
}

// migrateRoles is the -grant flag: repeatable, and each value may list
// several roles separated by commas.
type migrateRoles []string

func (r *migrateRoles) String() string { return strings.Join(*r, ",") }

func (r *migrateRoles) Set(v string) error {
	for _, role := range strings.Split(v, ",") {
		role = strings.TrimSpace(role)
		if role == "" {
			return errors.New("empty role name")
		}
		if strings.HasSuffix(role, ".gserviceaccount.com") {
			return fmt.Errorf("%q is a service account email; its Cloud SQL role is %q", role, store.IAMUser(role))
		}
		if !slices.Contains(*r, role) {
			*r = append(*r, role)
		}
	}
	return nil
}

func migrateCmd(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("migrate", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dryRun := fs.Bool("dry-run", false, "print the migration and GRANT SQL without connecting to anything")
	var roles migrateRoles
	fs.Var(&roles, "grant", "`role` to grant the functions' privileges to; repeat the flag or separate roles with commas.\n"+
		"A Cloud SQL IAM service account's role is its email without .gserviceaccount.com")
	var editors migrateRoles
	fs.Var(&editors, "grant-edits", "`role` of Messages deployed with HTTP_ROUTES=all: what -grant gives, plus UPDATE and DELETE on messages\n"+
		"(PUT, PATCH, DELETE /messages/{id}). -grant alone gives neither: IngestPubSub and the default routes never edit")
	var operators migrateRoles
	fs.Var(&operators, "deadletters-operator", "`role` that may run `go run ./cmd/pscmessages deadletters`: SELECT and DELETE on dead_letters, and\n"+
		"SELECT and INSERT on messages and idempotency_keys for replaying; never UPDATE or DELETE on messages")
	createRole := fs.Bool("create-role", false, "create a -grant or -deadletters-operator role that does not exist, as CREATE ROLE ... LOGIN without a password.\n"+
		"Not for Cloud SQL IAM users: gcloud sql users create --type=cloud_iam_service_account makes those")
	timeout := fs.Duration("timeout", 0, "give up after this long; 0, the default, never gives up: a migration that rewrites a large\n"+
		"table takes as long as it takes (Ctrl-C stops it, and PostgreSQL rolls back the migration it was applying)")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), "usage: go run ./cmd/pscmessages migrate [-dry-run] [-grant ROLE[,ROLE]]... [-grant-edits ROLE]... [-deadletters-operator ROLE]... [-create-role]\n\n"+
			"Applies the schema migrations as an administrator, then grants each -grant role exactly what the\n"+
			"functions use, in one transaction, and verifies the result. It connects with the functions'\n"+
			"own settings (DATABASE_URL, or DB_HOST, DB_PORT, DB_NAME, DB_USER, DB_PASSWORD, DB_SSLMODE, ...):\n"+
			"without DB_PASSWORD it logs in as DB_USER with an IAM token from Google default credentials.\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q; roles go after -grant", fs.Args())
	}
	for _, r := range editors { // an editor is a function role too
		roles.Set(r)
	}
	// An operator gets deadletter.OperatorPrivileges only, not the functions'
	// grants: it replays and deletes dead letters, and must not be able to
	// update or delete messages.
	if *dryRun {
		if err := migratePlan(stdout, roles, editors, *createRole); err != nil {
			return err
		}
		for _, op := range operators {
			for _, sql := range grants.SQL(op, deadletter.OperatorPrivileges()) {
				fmt.Fprintf(stdout, "%s;\n", sql)
			}
		}
		return nil
	}

	cfg, err := store.ConfigFromEnv(getenv)
	if err != nil {
		return err
	}
	if *timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, *timeout)
		defer cancel()
	}
	conn, err := store.AdminConn(ctx, cfg)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	cc := conn.Config()
	fmt.Fprintf(stdout, "connected to database %q on %s:%d as %q\n", cc.Database, cc.Host, cc.Port, cc.User)

	if err := migrateSchema(ctx, conn, stdout); err != nil {
		return err
	}
	if len(roles) == 0 && len(operators) == 0 {
		fmt.Fprintln(stdout, "no -grant roles: privileges unchanged")
		return nil
	}
	if len(roles) > 0 {
		if err := migrateGrant(ctx, conn, roles, editors, *createRole, stdout); err != nil {
			return err
		}
	}
	if err := migrateOperators(ctx, conn, operators, roles, *createRole, stdout, stderr); err != nil {
		return err
	}
	for _, role := range roles {
		if err := migrateWarnExcess(ctx, conn, role, slices.Contains(editors, role), stderr); err != nil {
			return err
		}
	}
	return nil
}

// migratePlan prints what a real run would execute. It cannot know which
// migrations a database already has, so it prints them all.
func migratePlan(w io.Writer, roles, editors []string, createRole bool) error {
	scripts, err := migrations.Scripts()
	if err != nil {
		return err
	}
	fmt.Fprintln(w, "-- Dry run: nothing was connected to or changed.")
	fmt.Fprintf(w, "-- Migrations, in order, each in its own transaction that first takes\n-- pg_advisory_xact_lock(%d); those at or below the version recorded in %s\n-- are skipped.\n", migrations.Lock, migrations.VersionTable)
	for _, m := range scripts {
		fmt.Fprintln(w, strings.TrimRight(m, "\n"))
		fmt.Fprintln(w)
	}
	if len(roles) == 0 {
		fmt.Fprintln(w, "-- No -grant roles: no privileges would change.")
		return nil
	}
	fmt.Fprintln(w, "-- Grants, in one transaction:")
	fmt.Fprintln(w, "BEGIN;")
	for _, role := range roles {
		if createRole {
			fmt.Fprintf(w, "-- only if the role does not exist:\n%s;\n", migrateCreateRoleSQL(role))
		}
		for _, sql := range migrateGrants(role, editors) {
			fmt.Fprintf(w, "%s;\n", sql)
		}
	}
	fmt.Fprintln(w, "COMMIT;")
	return nil
}

func migrateCreateRoleSQL(role string) string {
	return "CREATE ROLE " + pgx.Identifier{role}.Sanitize() + " LOGIN"
}

// migrateSchema applies the pending migrations and reports the versions.
func migrateSchema(ctx context.Context, conn *pgx.Conn, w io.Writer) error {
	before, err := migrateVersion(ctx, conn)
	if err != nil {
		return err
	}
	report, finish := migrateProgress(w, migrateTick)
	err = migrations.Apply(ctx, conn, report)
	finish()
	if err != nil {
		return err
	}
	after, err := migrateVersion(ctx, conn)
	if err != nil {
		return err
	}
	if after == before {
		fmt.Fprintf(w, "schema already at version %d: no migrations applied\n", after)
		return nil
	}
	fmt.Fprintf(w, "schema migrated from version %d to %d:\n", before, after)
	scripts, err := migrations.Scripts()
	if err != nil {
		return err
	}
	for i := before; i < after && int(i) < len(scripts); i++ {
		name, _, _ := strings.Cut(scripts[i], "\n")
		fmt.Fprintf(w, "  applied %s\n", strings.TrimPrefix(name, "-- "))
	}
	return nil
}

// migrateTick is how often a migration still running says so.
var migrateTick = 10 * time.Second

// migrateProgress prints each migration as it starts, every tick while it
// runs, and when it is applied, so that an operator sees a long rewrite
// advance and what it waits for. finish stops the ticking of a migration
// that failed.
func migrateProgress(w io.Writer, tick time.Duration) (report func(migrations.Step), finish func()) {
	var stop chan struct{}
	var done chan struct{}
	finish = func() {
		if stop != nil {
			close(stop)
			<-done
			stop = nil
		}
	}
	report = func(st migrations.Step) {
		switch {
		case st.Waiting:
			who := "another migrator"
			if st.WaitingPID != 0 {
				who = fmt.Sprintf("another migrator (backend pid %d)", st.WaitingPID)
			}
			fmt.Fprintf(w, "waiting for the migration lock held by %s\n", who)
		case st.Took == 0:
			what := ""
			if len(st.Scans) > 0 {
				what = fmt.Sprintf(": scans %s (%.1f MiB), which takes a while on a large table", strings.Join(st.Scans, ", "), float64(st.Bytes)/(1<<20))
			}
			fmt.Fprintf(w, "applying %s%s\n", st.Name, what)
			stop, done = make(chan struct{}), make(chan struct{})
			go func(name string, stop, done chan struct{}) {
				defer close(done)
				start := time.Now()
				t := time.NewTicker(tick)
				defer t.Stop()
				for {
					select {
					case <-stop:
						return
					case <-t.C:
						fmt.Fprintf(w, "  still applying %s (%s)\n", name, time.Since(start).Round(time.Second))
					}
				}
			}(st.Name, stop, done)
		default:
			finish()
			fmt.Fprintf(w, "applied %s in %s\n", st.Name, st.Took.Round(time.Millisecond))
		}
	}
	return report, finish
}

// migrateVersion is the recorded schema version, 0 before the first migration.
func migrateVersion(ctx context.Context, conn *pgx.Conn) (int32, error) {
	var v int32
	err := conn.QueryRow(ctx, "SELECT version FROM "+pgx.Identifier{migrations.VersionTable}.Sanitize()).Scan(&v)
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "42P01" { // undefined_table
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("reading the schema version: %w", err)
	}
	return v, nil
}

// migrateGrants is what role is granted: the functions' privileges, and
// the edits' too for a -grant-edits role.
func migrateGrants(role string, editors []string) []string {
	sql := grants.SQL(role, grants.Functions())
	if slices.Contains(editors, role) {
		sql = append(sql, grants.SQL(role, grants.Edits())...)
	}
	return sql
}

// migrateGrant grants every role its privileges in one transaction and checks,
// before committing, that PostgreSQL now reports none missing: all roles are
// granted or none is.
func migrateGrant(ctx context.Context, conn *pgx.Conn, roles, editors []string, createRole bool, w io.Writer) error {
	tx, err := conn.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(context.Background())
	for _, role := range roles {
		if err := migrateEnsureRole(ctx, tx, role, createRole, w); err != nil {
			return err
		}
		for _, sql := range migrateGrants(role, editors) {
			if _, err := tx.Exec(ctx, sql); err != nil {
				return fmt.Errorf("%s: %w", sql, err)
			}
			fmt.Fprintf(w, "%s\n", sql)
		}
		privs := grants.Functions()
		if slices.Contains(editors, role) {
			privs = append(privs, grants.Edits()...)
		}
		missing, err := grants.Missing(ctx, tx.Conn(), role, privs)
		if err != nil {
			return err
		}
		if len(missing) > 0 {
			return fmt.Errorf("after granting, role %q still lacks %v", role, missing)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("committing the grants: %w", err)
	}
	fmt.Fprintf(w, "granted and verified the functions' %d privileges for %s\n", len(grants.Functions()), strings.Join(migrateQuoted(roles), ", "))
	return nil
}

// migrateEnsureRole checks that role exists, creating it with -create-role.
func migrateEnsureRole(ctx context.Context, tx pgx.Tx, role string, createRole bool, w io.Writer) error {
	var exists bool
	if err := tx.QueryRow(ctx, "SELECT EXISTS (SELECT FROM pg_roles WHERE rolname = $1)", role).Scan(&exists); err != nil {
		return err
	}
	if exists {
		return nil
	}
	if !createRole {
		return fmt.Errorf("role %q does not exist. For a Cloud SQL IAM service account, create it with\n"+
			"  gcloud sql users create %s --instance=INSTANCE --type=cloud_iam_service_account\n"+
			"(its email without .gserviceaccount.com); for a password role pass -create-role and set its password", role, role)
	}
	if _, err := tx.Exec(ctx, migrateCreateRoleSQL(role)); err != nil {
		return fmt.Errorf("creating role %q: %w", role, err)
	}
	fmt.Fprintf(w, "created role %q (LOGIN, no password: set one, or use IAM)\n", role)
	return nil
}

// migrateOperators grants each -deadletters-operator role exactly
// deadletter.OperatorPrivileges, in one transaction, and warns when an
// operator that is not also a -grant role may update or delete messages
// (which a migrate before this one granted operators): grants only add.
func migrateOperators(ctx context.Context, conn *pgx.Conn, operators, roles []string, createRole bool, stdout, stderr io.Writer) error {
	if len(operators) == 0 {
		return nil
	}
	tx, err := conn.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(context.Background())
	for _, op := range operators {
		if err := migrateEnsureRole(ctx, tx, op, createRole, stdout); err != nil {
			return err
		}
		for _, sql := range grants.SQL(op, deadletter.OperatorPrivileges()) {
			if _, err := tx.Exec(ctx, sql); err != nil {
				return fmt.Errorf("%s: %w", sql, err)
			}
			fmt.Fprintln(stdout, sql)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("committing the operators' grants: %w", err)
	}
	for _, op := range operators {
		if slices.Contains(roles, op) {
			continue
		}
		var update, del bool
		if err := conn.QueryRow(ctx, `SELECT has_any_column_privilege($1::name, 'messages', 'UPDATE') OR has_table_privilege($1::name, 'idempotency_keys', 'UPDATE'),
			has_table_privilege($1::name, 'messages', 'DELETE') OR has_table_privilege($1::name, 'idempotency_keys', 'DELETE')`, op).Scan(&update, &del); err != nil {
			return fmt.Errorf("checking role %q: %w", op, err)
		}
		if update || del {
			fmt.Fprintf(stderr, "warning: dead-letter operator %q may update or delete messages, which `deadletters` never does: REVOKE UPDATE, DELETE ON TABLE messages, idempotency_keys FROM %s\n", op, pgx.Identifier{op}.Sanitize())
		}
	}
	return nil
}

func migrateQuoted(ss []string) []string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = fmt.Sprintf("%q", s)
	}
	return out
}

// migrateWarnExcess reports what role can do beyond the functions' needs.
// Grants only add, so they cannot take away what PUBLIC, a default role
// membership or PostgreSQL before 15 (CREATE on schema public for PUBLIC)
// gave; the operator decides whether to revoke it.
func migrateWarnExcess(ctx context.Context, conn *pgx.Conn, role string, editor bool, w io.Writer) error {
	var super, createRole, createDB, createInPublic, update, del bool
	var member, owns []string
	err := conn.QueryRow(ctx, `SELECT r.rolsuper, r.rolcreaterole, r.rolcreatedb,
			has_schema_privilege(r.rolname, 'public', 'CREATE'),
			has_table_privilege(r.rolname, 'messages', 'UPDATE'), has_table_privilege(r.rolname, 'messages', 'DELETE'),
			ARRAY(SELECT g.rolname::text FROM pg_roles g WHERE pg_has_role(r.oid, g.oid, 'USAGE') AND g.oid <> r.oid ORDER BY 1),
			ARRAY(SELECT c.relname::text FROM pg_class c WHERE pg_has_role(r.oid, c.relowner, 'USAGE')
				AND c.relname IN ('messages', 'dead_letters', $2) ORDER BY 1)
		FROM pg_roles r WHERE r.rolname = $1`, role, migrations.VersionTable).
		Scan(&super, &createRole, &createDB, &createInPublic, &update, &del, &member, &owns)
	if err != nil {
		return fmt.Errorf("checking role %q: %w", role, err)
	}
	q := pgx.Identifier{role}.Sanitize()
	warn := func(format string, args ...any) {
		fmt.Fprintf(w, "warning: role %q %s\n", role, fmt.Sprintf(format, args...))
	}
	if super || createRole || createDB {
		warn("has SUPERUSER, CREATEROLE or CREATEDB; the functions need none: ALTER ROLE %s NOSUPERUSER NOCREATEROLE NOCREATEDB", q)
	}
	if len(owns) > 0 {
		warn("owns (directly or through a role) %v, so it can alter or drop them; the administrator should own them", owns)
	}
	if slices.Contains(member, "cloudsqlsuperuser") {
		warn("is a member of cloudsqlsuperuser, which can create and drop objects: REVOKE cloudsqlsuperuser FROM %s", q)
	}
	if (update || del) && !editor {
		warn("may update or delete any message, which only Messages with HTTP_ROUTES=all does (-grant-edits): "+
			"REVOKE UPDATE, DELETE ON TABLE messages FROM %s", q)
	}
	if createInPublic {
		warn("can CREATE in schema public (PostgreSQL before 15 gives that to PUBLIC): REVOKE CREATE ON SCHEMA public FROM PUBLIC")
	}
	return nil
}
