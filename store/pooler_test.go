package store_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"example.com/pscmessages/store"
	"example.com/pscmessages/store/localpg"
)

// bouncedDB creates a fresh database and returns its URL through a new
// transaction-mode PgBouncer with a server pool of 2, and its direct URL.
func bouncedDB(t *testing.T) (pooled, direct string, b *localpg.Bouncer) {
	t.Helper()
	name := fmt.Sprintf("s%d", dbSeq.Add(1))
	if err := cluster.CreateDatabase(context.Background(), name); err != nil {
		t.Fatal(err)
	}
	b = localpg.BouncerForTest(t, localpg.BouncerOptions{Upstream: cluster})
	return b.URL("postgres", "", name), cluster.SuperuserURL(name), b
}

func openPooled(t *testing.T, url string) *store.Store {
	t.Helper()
	st, err := store.Open(context.Background(), store.Config{ConnString: url, Migrate: true, Pooler: store.PoolerTransaction, MaxConns: 8})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	return st
}

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
		_, err := store.Open(context.Background(), store.Config{
			ConnString: "postgres://u@127.0.0.1:1/d?default_query_exec_mode=" + mode, Pooler: store.PoolerTransaction})
		var ce *store.ConfigError
		if !errors.As(err, &ce) || ce.Var != "DATABASE_URL" || !strings.Contains(err.Error(), mode) {
			t.Errorf("%s: error %v, want a DATABASE_URL ConfigError naming it", mode, err)
		}
	}
}

// TestConcurrentReadsThroughTransactionPooler is the observed failure:
// through PgBouncer in transaction mode, concurrent reads answered
// `prepared statement "stmtcache_..." already exists (SQLSTATE 42P05)`,
// because pgx's statement cache assumes one server session per connection.
// With DB_POOLER=transaction every read, write and delete succeeds.
func TestConcurrentReadsThroughTransactionPooler(t *testing.T) {
	pooled, _, _ := bouncedDB(t)
	st := openPooled(t, pooled)
	ctx := context.Background()
	const workers, each = 16, 30
	var wg sync.WaitGroup
	errs := make(chan error, workers*each*5)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				a, err := st.Add(ctx, fmt.Sprintf("w%d-%d", w, i), fmt.Sprintf("k%d-%d", w, i))
				if err != nil {
					errs <- err
					continue
				}
				if _, err := st.List(ctx, store.Page{Limit: 5}); err != nil {
					errs <- err
				}
				if m, err := st.Get(ctx, a.ID); err != nil || m.Content != a.Content {
					errs <- fmt.Errorf("get %d: %q, %v", a.ID, m.Content, err)
				}
				if i%5 == 0 {
					if _, err := st.Update(ctx, a.ID, "edited"); err != nil {
						errs <- err
					}
					if err := st.Delete(ctx, a.ID); err != nil {
						errs <- err
					}
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	n := 0
	for err := range errs {
		if n++; n <= 5 {
			t.Error(err)
		}
	}
	if n > 5 {
		t.Errorf("... %d errors in all", n)
	}
}

// TestMigrationsThroughTransactionPooler: instances cold-starting together
// through the pooler migrate once, and no advisory lock is left held on a
// pooled server connection (tern's session lock was: its lock and unlock
// could run on different server connections).
func TestMigrationsThroughTransactionPooler(t *testing.T) {
	pooled, direct, _ := bouncedDB(t)
	// A leaked session lock makes the next migrator wait for ever: bound it.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	const instances = 6
	var wg sync.WaitGroup
	errs := make([]error, instances)
	for i := range instances {
		wg.Add(1)
		go func() {
			defer wg.Done()
			st, err := store.Open(ctx, store.Config{ConnString: pooled, Migrate: true, Pooler: store.PoolerTransaction})
			if err == nil {
				_, err = st.Add(ctx, fmt.Sprintf("from %d", i), "")
				st.Close()
			}
			errs[i] = err
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("instance %d: %v", i, err)
		}
	}
	conn, err := pgx.Connect(ctx, direct)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var locks, rows int
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'").Scan(&locks); err != nil {
		t.Fatal(err)
	}
	if locks != 0 {
		t.Errorf("%d advisory locks still held after the migrations", locks)
	}
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM messages").Scan(&rows); err != nil || rows != instances {
		t.Errorf("messages = %d, %v; want %d", rows, err, instances)
	}
	// A migration that waits behind the others still finds the lock free.
	if err := store.Migrate(ctx, conn); err != nil {
		t.Fatal(err)
	}
}

// TestMigrateWaitsForHeldLock: the transaction-scoped lock still serialises
// migrators, including an old build's tern holding the session lock.
func TestMigrateWaitsForHeldLock(t *testing.T) {
	_, direct := openStore(t)
	ctx := context.Background()
	holder, err := pgx.Connect(ctx, direct)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close(ctx)
	if _, err := holder.Exec(ctx, "SELECT pg_advisory_lock($1::bigint)", store.MigrationLock); err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.Connect(ctx, direct)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	if err := store.Migrate(short, conn); err == nil {
		t.Fatal("Migrate did not wait for a migration lock held by another session")
	}
	if _, err := holder.Exec(ctx, "SELECT pg_advisory_unlock($1::bigint)", store.MigrationLock); err != nil {
		t.Fatal(err)
	}
	conn2, err := pgx.Connect(ctx, direct)
	if err != nil {
		t.Fatal(err)
	}
	defer conn2.Close(ctx)
	if err := store.Migrate(ctx, conn2); err != nil {
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
