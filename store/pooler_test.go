package store_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"example.com/pscmessages/store"
	"example.com/pscmessages/store/migrations"
)

func TestDBPoolerSetting(t *testing.T) {
	cases := []struct {
		value   string
		want    store.Pooler
		wantErr bool
	}{
		{"", store.PoolerNone, false},
		{"none", store.PoolerNone, false},
		{"transaction", store.PoolerTransaction, false},
		{" Transaction ", store.PoolerTransaction, false},
		{"session", "", true},
		{"pgbouncer", "", true},
	}
	for _, tc := range cases {
		for _, base := range []map[string]string{
			{"DATABASE_URL": "postgres://u@h/d"},
			{"DB_HOST": "10.0.0.100", "DB_NAME": "d"},
		} {
			env := map[string]string{"DB_POOLER": tc.value}
			for k, v := range base {
				env[k] = v
			}
			c, err := store.ConfigFromEnv(func(k string) string { return env[k] })
			var ce *store.ConfigError
			switch {
			case tc.wantErr && (!errors.As(err, &ce) || ce.Var != "DB_POOLER"):
				t.Errorf("DB_POOLER=%q with %v: error %v, want one naming DB_POOLER", tc.value, base, err)
			case !tc.wantErr && (err != nil || c.Pooler != tc.want):
				t.Errorf("DB_POOLER=%q with %v: %q, %v; want %q", tc.value, base, c.Pooler, err, tc.want)
			}
		}
	}
}

// TestPoolerRefusesStatementCacheInURL: a DATABASE_URL that asks for the
// mode that fails behind the pooler is a configuration error, not a 500 on
// the first concurrent GET.
func TestPoolerRefusesStatementCacheInURL(t *testing.T) {
	for _, mode := range []string{"cache_statement", "describe_exec"} {
		_, err := store.Open(testContext(t), store.Config{
			ConnString: "postgres://u@127.0.0.1:1/d?default_query_exec_mode=" + mode, Pooler: store.PoolerTransaction})
		var ce *store.ConfigError
		if !errors.As(err, &ce) || ce.Var != "DATABASE_URL" || !strings.Contains(err.Error(), mode) {
			t.Errorf("%s: error %v, want a DATABASE_URL ConfigError naming it", mode, err)
		}
	}
}

// TestMigrateWaitsForHeldLock: the transaction-scoped lock still serialises
// migrators, including an old build's tern holding the session lock.
func TestMigrateWaitsForHeldLock(t *testing.T) {
	_, direct := openStore(t)
	ctx := testContext(t)
	holder, err := pgx.Connect(ctx, direct)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close(ctx)
	if _, err := holder.Exec(ctx, "SELECT pg_advisory_lock($1::bigint)", migrations.Lock); err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.Connect(ctx, direct)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	if err := migrations.Apply(short, conn, nil); err == nil {
		t.Fatal("Migrate did not wait for a migration lock held by another session")
	}
	if _, err := holder.Exec(ctx, "SELECT pg_advisory_unlock($1::bigint)", migrations.Lock); err != nil {
		t.Fatal(err)
	}
	conn2, err := pgx.Connect(ctx, direct)
	if err != nil {
		t.Fatal(err)
	}
	defer conn2.Close(ctx)
	if err := migrations.Apply(ctx, conn2, nil); err != nil {
		t.Fatal(err)
	}
}

// TestNoSessionStateInStore guards DB_POOLER=transaction against future
// statements: nothing in the store's code may leave state on a server
// session, which a transaction-mode pooler hands to other clients (or takes
// away) between transactions. SET LOCAL and pg_advisory_xact_lock end with
// their transaction and are fine.
func TestNoSessionStateInStore(t *testing.T) {
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	forbidden := regexp.MustCompile(`(?i)(pg_advisory_lock|pg_try_advisory_lock\(|\bCREATE\s+(TEMP|TEMPORARY)\b|\bLISTEN\b|\bPREPARE\s+\w|"SET\s+(SESSION\s+)?[a-z_]+\s*(=|TO)|AfterConnect|\.Prepare\(|DECLARE\s+\w+\s+.*WITH HOLD)`)
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		src, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for i, line := range strings.Split(string(src), "\n") {
			if strings.HasPrefix(strings.TrimSpace(line), "//") {
				continue
			}
			if m := forbidden.FindString(line); m != "" {
				t.Errorf("%s:%d uses %q, session state a transaction-mode pooler cannot keep: %s", f, i+1, m, strings.TrimSpace(line))
			}
		}
	}
}
