package localrun

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"example.com/pscmessages/store"
	"example.com/pscmessages/store/grants"
	"example.com/pscmessages/store/localpg"
	"example.com/pscmessages/store/localpg/localpgtest"
	"example.com/pscmessages/store/migrations"
)

func TestMigrateRolesFlag(t *testing.T) {
	tests := []struct {
		args    []string
		want    []string
		wantErr string
	}{
		{args: []string{"a"}, want: []string{"a"}},
		{args: []string{"a", "b,c"}, want: []string{"a", "b", "c"}},
		{args: []string{" a , b ", "a"}, want: []string{"a", "b"}},
		{args: []string{"fn@p.iam"}, want: []string{"fn@p.iam"}},
		{args: []string{"a,,b"}, wantErr: "empty role"},
		{args: []string{"fn@p.iam.gserviceaccount.com"}, wantErr: `role is "fn@p.iam"`},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			var r migrateRoles
			var err error
			for _, a := range tt.args {
				if err = r.Set(a); err != nil {
					break
				}
			}
			switch {
			case tt.wantErr != "":
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Errorf("err = %v; want it to mention %q", err, tt.wantErr)
				}
			case err != nil:
				t.Fatal(err)
			case !slices.Equal(r, tt.want):
				t.Errorf("roles = %q; want %q", r, tt.want)
			}
		})
	}
}

// migrateRun runs the migrate command with env as its whole environment.
func migrateRun(t *testing.T, env map[string]string, args ...string) (string, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	err := migrateCmd(t.Context(), args, func(k string) string { return env[k] }, &out, &errOut)
	t.Logf("migrate %s:\n%s%s", strings.Join(args, " "), out.String(), errOut.String())
	return out.String() + errOut.String(), err
}

// migrateCluster starts a cluster with a password-protected superuser (the
// administrator) and an empty database "app".
func migrateCluster(t *testing.T) *localpg.Cluster {
	t.Helper()
	c := localpgtest.Start(t, localpg.Options{Password: "admin-pw"})
	if err := c.CreateDatabase(t.Context(), "app"); err != nil {
		t.Fatal(err)
	}
	return c
}

func migrateAdminEnv(c *localpg.Cluster) map[string]string {
	return map[string]string{"DATABASE_URL": c.SuperuserURL("app")}
}

func migrateTableCount(t *testing.T, c *localpg.Cluster) int {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), c.SuperuserURL("app"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(t.Context())
	var n int
	if err := conn.QueryRow(t.Context(), "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestMigrateGrantsLeastPrivilege is the operator's path end to end: the
// administrator migrates and grants, and then the function, logging in as its
// own role with migrations off, does all its work but cannot change the
// schema; a role without the grants is refused cleanly at Open.
func TestMigrateGrantsLeastPrivilege(t *testing.T) {
	c := migrateCluster(t)
	ctx := t.Context()
	if err := c.Exec(ctx, `CREATE ROLE fn_user LOGIN PASSWORD 'fn-pw';
		CREATE ROLE "ingest-fn@my-project.iam" LOGIN PASSWORD 'ingest-pw';
		CREATE ROLE other_user LOGIN PASSWORD 'other-pw'`); err != nil {
		t.Fatal(err)
	}

	// The administrator logs in through the same variables the function
	// reads, here with a password.
	env := map[string]string{
		"DB_HOST": c.Host(), "DB_PORT": strconv.Itoa(c.Port()), "DB_NAME": "app",
		"DB_USER": "postgres", "DB_PASSWORD": "admin-pw", "DB_SSLMODE": "disable",
	}
	out, err := migrateRun(t, env, "-grant", "fn_user,ingest-fn@my-project.iam")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		`as "postgres"`,
		fmt.Sprintf("schema migrated from version 0 to %d", migrations.Latest()),
		"applied 003_dead_letters.sql",
		`GRANT SELECT, INSERT ON TABLE "messages" TO "fn_user"`,
		`TO "ingest-fn@my-project.iam"`,
		"granted and verified",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	if strings.Contains(out, "warning:") {
		t.Errorf("unexpected warning for a plain role")
	}

	// Rerunning is harmless.
	out, err = migrateRun(t, env, "-grant", "fn_user")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, fmt.Sprintf("schema already at version %d", migrations.Latest())) {
		t.Errorf("second run did not report the schema as current")
	}

	t.Run("the function's role works", func(t *testing.T) {
		for _, role := range []struct{ user, password string }{
			{"fn_user", "fn-pw"},
			{"ingest-fn@my-project.iam", "ingest-pw"},
		} {
			st, err := store.Open(ctx, store.Config{ConnString: c.URL(role.user, role.password, "app"), Migrate: false})
			if err != nil {
				t.Fatalf("Open as %s: %v", role.user, err)
			}
			defer st.Close()
			added, err := st.Add(ctx, "hi from "+role.user, "")
			if err != nil {
				t.Fatalf("Add: %v", err)
			}
			if _, err := st.Get(ctx, added.ID); err != nil {
				t.Errorf("Get: %v", err)
			}
			// Edits need -grant-edits (TestMigrateGrantEdits).
			if _, err := st.Update(ctx, added.ID, "edited"); err == nil || !strings.Contains(err.Error(), "42501") {
				t.Errorf("Update without -grant-edits: %v, want permission denied", err)
			}
			if list, err := st.List(ctx, store.Page{}); err != nil || len(list.Messages) == 0 {
				t.Errorf("List = %+v, %v", list, err)
			}
			dl := store.DeadLetter{EventID: "e-" + role.user, EventSource: "//pubsub", Reason: "poison"}
			for range 2 { // the second is a redelivery
				if err := st.AddDeadLetter(ctx, dl); err != nil {
					t.Errorf("AddDeadLetter: %v", err)
				}
			}
			if err := st.Delete(ctx, added.ID); err == nil || !strings.Contains(err.Error(), "42501") {
				t.Errorf("Delete without -grant-edits: %v, want permission denied", err)
			}
		}
	})

	t.Run("the function's role cannot change the schema", func(t *testing.T) {
		conn, err := pgx.Connect(ctx, c.URL("fn_user", "fn-pw", "app"))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(ctx)
		for _, sql := range []string{
			"CREATE TABLE sneaky (id int)",
			"DROP TABLE messages",
			"ALTER TABLE messages ADD COLUMN sneaky int",
			"TRUNCATE messages",
			"SELECT reason FROM dead_letters", // it may only write dead letters
			"CREATE SCHEMA sneaky",
		} {
			_, err := conn.Exec(ctx, sql)
			var pgErr *pgconn.PgError
			if !errors.As(err, &pgErr) || pgErr.Code != "42501" {
				t.Errorf("%s: err = %v; want permission denied (42501)", sql, err)
			}
		}
	})

	t.Run("a role without the grants fails cleanly", func(t *testing.T) {
		st, err := store.Open(ctx, store.Config{ConnString: c.URL("other_user", "other-pw", "app"), Migrate: false})
		if err == nil {
			st.Close()
			t.Fatal("Open succeeded without grants")
		}
		if !errors.Is(err, store.ErrSchema) {
			t.Errorf("Open error %v is not ErrSchema", err)
		}
		if !strings.Contains(err.Error(), "lacks") || !strings.Contains(err.Error(), "INSERT on table messages") || !strings.Contains(err.Error(), migrations.VersionTable) {
			t.Errorf("Open error %q does not name the missing privilege", err)
		}
	})

	t.Run("a role with part of the grants fails cleanly", func(t *testing.T) {
		if err := c.Exec(ctx, `CREATE ROLE partial LOGIN PASSWORD 'p'`); err != nil {
			t.Fatal(err)
		}
		admin, err := pgx.Connect(ctx, c.SuperuserURL("app"))
		if err != nil {
			t.Fatal(err)
		}
		defer admin.Close(ctx)
		if _, err := admin.Exec(ctx, "GRANT SELECT ON "+migrations.VersionTable+" TO partial"); err != nil {
			t.Fatal(err)
		}
		st, err := store.Open(ctx, store.Config{ConnString: c.URL("partial", "p", "app"), Migrate: false})
		if err == nil {
			st.Close()
			t.Fatal("Open succeeded with partial grants")
		}
		if !errors.Is(err, store.ErrSchema) || !strings.Contains(err.Error(), `"partial"`) || !strings.Contains(err.Error(), "-grant") {
			t.Errorf("Open error %q is not ErrSchema naming the role and the fix", err)
		}
		missing, err := grants.Missing(ctx, admin, "partial", grants.Functions())
		if err != nil {
			t.Fatal(err)
		}
		// PUBLIC's USAGE on schema public and the one grant are there.
		if len(missing) != len(grants.Functions())-2 {
			t.Errorf("MissingPrivileges = %v", missing)
		}
	})
}

func TestMigrateDryRunTouchesNothing(t *testing.T) {
	c := migrateCluster(t)
	tests := []struct {
		name    string
		env     map[string]string
		args    []string
		want    []string
		notWant []string
	}{
		{
			name: "with a database configured",
			env:  migrateAdminEnv(c),
			args: []string{"-dry-run", "-grant", "fn@p.iam"},
			want: []string{
				"CREATE TABLE IF NOT EXISTS messages", "CREATE TABLE IF NOT EXISTS dead_letters",
				"BEGIN;", `GRANT USAGE ON SEQUENCE "messages_id_seq" TO "fn@p.iam";`, "COMMIT;",
			},
			notWant: []string{"CREATE ROLE"},
		},
		{
			name: "with no database at all",
			env:  map[string]string{},
			args: []string{"-dry-run", "-create-role", "-grant", "a,b"},
			want: []string{`CREATE ROLE "a" LOGIN;`, `TO "b";`},
		},
		{
			name:    "without roles",
			env:     map[string]string{},
			args:    []string{"-dry-run"},
			want:    []string{"002_message_metadata.sql", "No -grant roles"},
			notWant: []string{"GRANT"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := migrateRun(t, tt.env, tt.args...)
			if err != nil {
				t.Fatal(err)
			}
			for _, w := range tt.want {
				if !strings.Contains(out, w) {
					t.Errorf("output lacks %q", w)
				}
			}
			for _, w := range tt.notWant {
				if strings.Contains(out, w) {
					t.Errorf("output has %q", w)
				}
			}
			if n := migrateTableCount(t, c); n != 0 {
				t.Errorf("dry run left %d tables", n)
			}
		})
	}
}

func TestMigrateRoleMustExist(t *testing.T) {
	c := migrateCluster(t)
	ctx := t.Context()

	out, err := migrateRun(t, migrateAdminEnv(c), "-grant", "exists_not,fn@p.iam")
	if err == nil || !strings.Contains(err.Error(), "gcloud sql users create exists_not") || !strings.Contains(err.Error(), "cloud_iam_service_account") {
		t.Fatalf("err = %v; want the gcloud hint", err)
	}
	if strings.Contains(out, "GRANT") {
		t.Errorf("granted something although a role was missing")
	}

	if _, err := migrateRun(t, migrateAdminEnv(c), "-create-role", "-grant", "made_here"); err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.Connect(ctx, c.SuperuserURL("app"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var login bool
	if err := conn.QueryRow(ctx, "SELECT rolcanlogin FROM pg_roles WHERE rolname = 'made_here'").Scan(&login); err != nil || !login {
		t.Errorf("made_here: login=%v err=%v", login, err)
	}
	if missing, err := grants.Missing(ctx, conn, "made_here", grants.Functions()); err != nil || len(missing) > 0 {
		t.Errorf("MissingPrivileges = %v, %v", missing, err)
	}
}

// TestMigrateGrantIsAllOrNothing: when one role cannot be granted, no role is.
func TestMigrateGrantIsAllOrNothing(t *testing.T) {
	c := migrateCluster(t)
	if err := c.Exec(t.Context(), "CREATE ROLE first LOGIN"); err != nil {
		t.Fatal(err)
	}
	if _, err := migrateRun(t, migrateAdminEnv(c), "-grant", "first,missing"); err == nil {
		t.Fatal("migrate succeeded with a missing role")
	}
	conn, err := pgx.Connect(t.Context(), c.SuperuserURL("app"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(t.Context())
	missing, err := grants.Missing(t.Context(), conn, "first", grants.Functions())
	if err != nil {
		t.Fatal(err)
	}
	// The schema was migrated, but "first" got nothing beyond PUBLIC's USAGE.
	if len(missing) != len(grants.Functions())-1 {
		t.Errorf("first was partly granted: missing only %v", missing)
	}
}

func TestMigrateWarnsAboutExcessPrivileges(t *testing.T) {
	c := migrateCluster(t)
	if err := c.Exec(t.Context(), `CREATE ROLE broad LOGIN CREATEDB;
		CREATE ROLE owner_group; GRANT owner_group TO broad`); err != nil {
		t.Fatal(err)
	}
	if _, err := migrateRun(t, migrateAdminEnv(c)); err != nil {
		t.Fatal(err)
	}
	admin, err := pgx.Connect(t.Context(), c.SuperuserURL("app"))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(t.Context())
	for _, sql := range []string{"ALTER TABLE dead_letters OWNER TO owner_group", "GRANT CREATE ON SCHEMA public TO broad"} {
		if _, err := admin.Exec(t.Context(), sql); err != nil {
			t.Fatal(err)
		}
	}
	out, err := migrateRun(t, migrateAdminEnv(c), "-grant", "broad")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"CREATEDB", "owns (directly or through a role) [dead_letters]", "can CREATE in schema public"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks warning %q", want)
		}
	}
}

func TestMigrateConfigErrors(t *testing.T) {
	tests := []struct {
		name string
		env  map[string]string
		args []string
		want string
	}{
		{"no database", map[string]string{}, nil, "DB_HOST"},
		{"IAM without TLS", map[string]string{"DB_HOST": "127.0.0.1", "DB_NAME": "app", "DB_SSLMODE": "disable"}, nil, "DB_SSLMODE"},
		{"stray argument", map[string]string{}, []string{"fn_user"}, "after -grant"},
		{"unknown flag", map[string]string{}, []string{"-grants", "x"}, "-grants"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := migrateRun(t, tt.env, tt.args...)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("err = %v; want it to mention %s", err, tt.want)
			}
		})
	}
	if _, err := migrateRun(t, nil, "-help"); err != nil {
		t.Errorf("-help: %v", err)
	}
}

// TestMigrateShowsProgressWithoutDeadline: `migrate` has no deadline by
// default, waits (saying for whom) while another migrator holds the
// migration lock, then names each migration as it starts, says it is still
// running every tick, and how long it took.
func TestMigrateShowsProgressWithoutDeadline(t *testing.T) {
	c := migrateCluster(t)
	ctx := t.Context()
	conn, err := pgx.Connect(ctx, c.SuperuserURL("app"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
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
		INSERT INTO messages (content) SELECT 'message ' || i FROM generate_series(1, 200000) i`); err != nil {
		t.Fatal(err)
	}
	if fl := flagDefault(t, "timeout"); fl != "" {
		t.Fatalf("-timeout defaults to %s, want none", fl)
	}
	defer func(d time.Duration) { migrateTick = d }(migrateTick)
	migrateTick = 20 * time.Millisecond

	// Another migrator holds the lock.
	holder, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := holder.Exec(ctx, "SELECT pg_advisory_xact_lock($1::bigint)", migrations.Lock); err != nil {
		t.Fatal(err)
	}
	var pid int32
	if err := holder.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pid); err != nil {
		t.Fatal(err)
	}
	out := &syncWriter{}
	done := make(chan error, 1)
	go func() {
		done <- migrateCmd(ctx, nil, func(k string) string { return migrateAdminEnv(c)[k] }, out, out)
	}()
	waiting := fmt.Sprintf("waiting for the migration lock held by another migrator (backend pid %d)", pid)
	for deadline := time.Now().Add(10 * time.Second); !strings.Contains(out.String(), waiting); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("migrate does not say it waits for pid %d:\n%s", pid, out.String())
		}
	}
	if err := holder.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("migrate: %v\n%s", err, out.String())
	}
	for _, want := range []*regexp.Regexp{
		regexp.MustCompile(`applying 005_message_ids_bigint.sql: scans messages \([0-9.]+ MiB\)`),
		regexp.MustCompile(`still applying 005_message_ids_bigint.sql \(`),
		regexp.MustCompile(`applied 005_message_ids_bigint.sql in [0-9.]+m?s`),
		regexp.MustCompile(`applied 006_idempotency_keys.sql in`),
		regexp.MustCompile(fmt.Sprintf(`schema migrated from version 4 to %d`, migrations.Latest())),
	} {
		if !want.MatchString(out.String()) {
			t.Errorf("migrate output lacks %s:\n%s", want, out.String())
		}
	}
}

// flagDefault is the default of migrate's flag name as -help prints it,
// "" for none (the zero value).
func flagDefault(t *testing.T, name string) string {
	t.Helper()
	var out bytes.Buffer
	if err := migrateCmd(t.Context(), []string{"-help"}, func(string) string { return "" }, &out, &out); err != nil {
		t.Fatal(err)
	}
	_, block, ok := strings.Cut(out.String(), "\n  -"+name+" ")
	if !ok {
		t.Fatalf("-help does not list -%s:\n%s", name, out.String())
	}
	block, _, _ = strings.Cut(block, "\n  -")
	if m := regexp.MustCompile(`\(default ([^)]+)\)`).FindStringSubmatch(block); m != nil {
		return m[1]
	}
	return ""
}

// syncWriter is a buffer written by migrate's progress and read by the test.
type syncWriter struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (w *syncWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

func (w *syncWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.String()
}

// TestMigrateGrantEdits: -grant-edits gives a role what -grant gives plus
// UPDATE and DELETE on messages (HTTP_ROUTES=all); a -grant role that holds
// them from an older migrate is warned, with the statement that takes them
// back.
func TestMigrateGrantEdits(t *testing.T) {
	c := migrateCluster(t)
	ctx := t.Context()
	if err := c.Exec(ctx, `CREATE ROLE editor LOGIN; CREATE ROLE old_fn LOGIN`); err != nil {
		t.Fatal(err)
	}
	out, err := migrateRun(t, migrateAdminEnv(c), "-grant-edits", "editor")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, `GRANT UPDATE, DELETE ON TABLE "messages" TO "editor"`) || !strings.Contains(out, "granted and verified") {
		t.Errorf("-grant-edits output:\n%s", out)
	}
	admin, err := pgx.Connect(ctx, c.SuperuserURL("app"))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	if missing, err := grants.Missing(ctx, admin, "editor", grants.Functions()); err != nil || len(missing) > 0 {
		t.Errorf("editor lacks the functions' privileges: %v %v", missing, err)
	}
	if _, err := admin.Exec(ctx, `GRANT UPDATE, DELETE ON TABLE messages TO old_fn`); err != nil { // as an older migrate did
		t.Fatal(err)
	}
	out, err = migrateRun(t, migrateAdminEnv(c), "-grant", "old_fn")
	if err != nil {
		t.Fatal(err)
	}
	want := `REVOKE UPDATE, DELETE ON TABLE messages FROM "old_fn"`
	if !strings.Contains(out, want) {
		t.Fatalf("no warning with %q:\n%s", want, out)
	}
	if _, err := admin.Exec(ctx, want); err != nil {
		t.Fatal(err)
	}
	if missing, err := grants.Missing(ctx, admin, "old_fn", grants.Functions()); err != nil || len(missing) > 0 {
		t.Errorf("after the printed REVOKE, old_fn lacks %v %v", missing, err)
	}
}
