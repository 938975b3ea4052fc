package store_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"golang.org/x/oauth2"

	"example.com/pscmessages/store"
	"example.com/pscmessages/store/grants"
	"example.com/pscmessages/store/localpg"
	"example.com/pscmessages/store/localpg/localpgtest"
	"example.com/pscmessages/store/migrations"
)

// grantsDB creates a migrated database on c whose schema public is closed to
// PUBLIC, as a hardened database would be, so that every grant is needed. It
// returns the database name.
func grantsDB(t *testing.T, c *localpg.Cluster, name string) string {
	t.Helper()
	ctx := t.Context()
	if err := c.CreateDatabase(ctx, name); err != nil {
		t.Fatal(err)
	}
	admin, err := store.AdminConn(ctx, store.Config{ConnString: c.SuperuserURL(name)})
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	if err := migrations.Apply(ctx, admin, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.Exec(ctx, "REVOKE ALL ON SCHEMA public FROM PUBLIC"); err != nil {
		t.Fatal(err)
	}
	return name
}

func grantsExec(t *testing.T, url string, sqls ...string) {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(t.Context())
	for _, sql := range sqls {
		if _, err := conn.Exec(t.Context(), sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
}

func grantsMissing(t *testing.T, url, role string) []grants.Privilege {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(t.Context())
	missing, err := grants.Missing(t.Context(), conn, role, grants.Functions())
	if err != nil {
		t.Fatal(err)
	}
	return missing
}

// grantsExercise runs every operation of the store once but the edits.
func grantsExercise(ctx context.Context, st *store.Store, key string) error {
	added, err := st.Add(ctx, "hello", key)
	if err != nil {
		return err
	}
	if _, err := st.Add(ctx, "hello", key); err != nil { // a replay reads the row back
		return err
	}
	if _, err := st.Get(ctx, added.ID); err != nil {
		return err
	}
	if _, err := st.List(ctx, store.Page{}); err != nil {
		return err
	}
	dl := store.DeadLetter{EventID: key, EventSource: "test", EventType: "t", Reason: "poison", Payload: []byte("x")}
	if err := st.AddDeadLetter(ctx, dl); err != nil {
		return err
	}
	if err := st.AddDeadLetter(ctx, dl); err != nil { // a redelivery hits the conflict
		return err
	}
	_, err = st.ExpireKeys(ctx, 0) // the writer's cleanup
	return err
}

// grantsEdit runs the edits of HTTP_ROUTES=all.
func grantsEdit(ctx context.Context, st *store.Store) error {
	added, err := st.Add(ctx, "to edit", "")
	if err != nil {
		return err
	}
	if _, err := st.Update(ctx, added.ID, "edited"); err != nil {
		return err
	}
	return st.Delete(ctx, added.ID)
}

// TestGrantSQLGivesNoEdits: the functions' grant lets neither role update
// or delete messages (IngestPubSub never does, nor does Messages without
// HTTP_ROUTES=all).
func TestGrantSQLGivesNoEdits(t *testing.T) {
	c := localpgtest.Shared(t, localpg.Options{Password: "admin-pw"})
	ctx := t.Context()
	db := grantsDB(t, c, "noedits")
	admin := c.SuperuserURL(db)
	if err := c.Exec(ctx, `CREATE ROLE fn_ingest LOGIN PASSWORD 'fn-pw'`); err != nil {
		t.Fatal(err)
	}
	grantsExec(t, admin, grants.SQL("fn_ingest", grants.Functions())...)
	conn, err := pgx.Connect(ctx, admin)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var update, del bool
	if err := conn.QueryRow(ctx, `SELECT has_any_column_privilege('fn_ingest', 'messages', 'UPDATE'), has_table_privilege('fn_ingest', 'messages', 'DELETE')`).
		Scan(&update, &del); err != nil {
		t.Fatal(err)
	}
	if update || del {
		t.Fatalf("GrantSQL gives UPDATE %v, DELETE %v on messages; want neither", update, del)
	}
}

// TestEditsNeedTheirGrant: a store for HTTP_ROUTES=all (Config.Edits) opened
// as a role with only the functions' grant is refused at Open, permanently,
// naming the missing privileges and the grant; without Edits the role works
// but cannot edit; with EditPrivileges granted too it can.
func TestEditsNeedTheirGrant(t *testing.T) {
	c := localpgtest.Shared(t, localpg.Options{Password: "admin-pw"})
	ctx := t.Context()
	db := grantsDB(t, c, "edits")
	admin := c.SuperuserURL(db)
	if err := c.Exec(ctx, `CREATE ROLE fn_msg LOGIN PASSWORD 'fn-pw'`); err != nil {
		t.Fatal(err)
	}
	grantsExec(t, admin, grants.SQL("fn_msg", grants.Functions())...)
	cfg := store.Config{ConnString: c.URL("fn_msg", "fn-pw", db), Edits: true}
	_, err := store.Open(ctx, cfg)
	if !errors.Is(err, store.ErrPermanent) || !strings.Contains(err.Error(), "HTTP_ROUTES=all") ||
		!strings.Contains(err.Error(), "UPDATE on table messages, DELETE on table messages") || !strings.Contains(err.Error(), "-grant-edits") {
		t.Fatalf("Open with Edits and no edit grant: %v; want a permanent error naming the privileges and -grant-edits", err)
	}
	cfg.Edits = false
	st, err := store.Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	var pgErr *pgconn.PgError
	if err := grantsEdit(ctx, st); !errors.As(err, &pgErr) || pgErr.Code != "42501" {
		t.Errorf("an edit without the edit grant: %v, want permission denied", err)
	}
	st.Close()
	grantsExec(t, admin, grants.SQL("fn_msg", grants.Edits())...)
	cfg.Edits = true
	if st, err = store.Open(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if err := grantsEdit(ctx, st); err != nil {
		t.Fatalf("an edit with the edit grant: %v", err)
	}
}

// TestGrantSQLIsExactlyWhatTheFunctionNeeds proves both directions. With the
// grants, a role that owns nothing runs every store operation. Without any
// single one of them, the function cannot work: either Open refuses with
// ErrSchema, or an operation is denied.
func TestGrantSQLIsExactlyWhatTheFunctionNeeds(t *testing.T) {
	c := localpgtest.Shared(t, localpg.Options{Password: "admin-pw"})
	ctx := t.Context()
	db := grantsDB(t, c, "grants")
	admin := c.SuperuserURL(db)
	if err := c.Exec(ctx, `CREATE ROLE fn_user LOGIN PASSWORD 'fn-pw'`); err != nil {
		t.Fatal(err)
	}

	if got := grantsMissing(t, admin, "fn_user"); len(got) != len(grants.Functions()) {
		t.Fatalf("before granting, missing = %v; want all %d", got, len(grants.Functions()))
	}
	grantsExec(t, admin, grants.SQL("fn_user", grants.Functions())...)
	grantsExec(t, admin, grants.SQL("fn_user", grants.Functions())...) // idempotent
	if got := grantsMissing(t, admin, "fn_user"); len(got) != 0 {
		t.Fatalf("after granting, missing = %v", got)
	}

	fnCfg := store.Config{ConnString: c.URL("fn_user", "fn-pw", db), Migrate: false}
	st, err := store.Open(ctx, fnCfg)
	if err != nil {
		t.Fatalf("Open as fn_user: %v", err)
	}
	if err := grantsExercise(ctx, st, "all"); err != nil {
		t.Fatalf("with every grant: %v", err)
	}
	st.Close()

	for i, p := range grants.Functions() {
		t.Run("without "+p.String(), func(t *testing.T) {
			priv, on := p.SQL()
			grantsExec(t, admin, fmt.Sprintf("REVOKE %s ON %s FROM fn_user", priv, on))
			defer grantsExec(t, admin, fmt.Sprintf("GRANT %s ON %s TO fn_user", priv, on))

			if got := grantsMissing(t, admin, "fn_user"); !slices.Equal(got, []grants.Privilege{p}) {
				t.Errorf("MissingPrivileges = %v; want [%v]", got, p)
			}
			st, err := store.Open(ctx, fnCfg)
			if err != nil {
				if !errors.Is(err, store.ErrSchema) {
					t.Errorf("Open error %v is not ErrSchema", err)
				}
				return
			}
			defer st.Close()
			err = grantsExercise(ctx, st, fmt.Sprint("k", i))
			var pgErr *pgconn.PgError
			if !errors.As(err, &pgErr) || pgErr.Code != "42501" {
				t.Errorf("without %v the store still works (err = %v)", p, err)
			}
		})
	}
}

func TestMissingPrivilegesOnUnmigratedDatabase(t *testing.T) {
	if err := cluster.CreateDatabase(t.Context(), "unmigrated"); err != nil {
		t.Fatal(err)
	}
	if err := cluster.Exec(t.Context(), "CREATE ROLE unmigrated_reader"); err != nil {
		t.Fatal(err)
	}
	got := grantsMissing(t, cluster.SuperuserURL("unmigrated"), "unmigrated_reader")
	// USAGE on schema public is PUBLIC's by default; every table and
	// sequence is missing because it does not exist.
	if len(got) != len(grants.Functions())-1 || slices.Contains(got, grants.Functions()[0]) {
		t.Errorf("MissingPrivileges = %v", got)
	}
}

type grantsTokens struct{ token string }

func (s grantsTokens) Token() (*oauth2.Token, error) {
	return &oauth2.Token{AccessToken: s.token, Expiry: time.Now().Add(time.Hour)}, nil
}

// TestAdminConnLogsInLikeTheFunction checks that administrators get the
// function's configuration rules: IAM logins send the token as the password
// over TLS only, and password logins work as they are.
func TestAdminConnLogsInLikeTheFunction(t *testing.T) {
	c := localpgtest.Shared(t, localpg.Options{Password: "admin-pw", TLS: true})
	ctx := t.Context()
	if err := c.Exec(ctx, `CREATE ROLE "admin@my-project.iam" LOGIN PASSWORD 'token-1'`); err != nil {
		t.Fatal(err)
	}
	iam := func(token, sslmode string) store.Config {
		return store.Config{
			Host: c.Host(), Port: c.Port(), Database: "postgres", User: "admin@my-project.iam",
			IAMAuth: true, SSLMode: sslmode, TokenSource: grantsTokens{token},
		}
	}
	tests := []struct {
		name     string
		cfg      store.Config
		wantUser string
		wantErr  func(error) bool
	}{
		{name: "IAM token over TLS", cfg: iam("token-1", ""), wantUser: "admin@my-project.iam"},
		{name: "IAM with a stale token", cfg: iam("token-0", "require"), wantErr: func(err error) bool {
			return errors.Is(err, store.ErrUnavailable) // 28P01 is retried by callers
		}},
		{name: "IAM refuses plaintext", cfg: iam("token-1", "disable"), wantErr: func(err error) bool {
			var cfgErr *store.ConfigError
			return errors.As(err, &cfgErr)
		}},
		{name: "password", cfg: store.Config{
			Host: c.Host(), Port: c.Port(), Database: "postgres", User: "postgres",
			Password: "admin-pw", SSLMode: "require",
		}, wantUser: "postgres"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			conn, err := store.AdminConn(ctx, tt.cfg)
			if tt.wantErr != nil {
				if err == nil {
					conn.Close(ctx)
					t.Fatal("AdminConn succeeded")
				}
				if !tt.wantErr(err) {
					t.Fatalf("AdminConn error %v (%T) is not the expected kind", err, err)
				}
				if strings.Contains(err.Error(), "token-") {
					t.Errorf("error leaks the token: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close(ctx)
			var user string
			var ssl bool
			err = conn.QueryRow(ctx, "SELECT current_user, (SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid())").Scan(&user, &ssl)
			if err != nil {
				t.Fatal(err)
			}
			if user != tt.wantUser || !ssl {
				t.Errorf("logged in as %q, ssl=%v; want %q over TLS", user, ssl, tt.wantUser)
			}
		})
	}
}
