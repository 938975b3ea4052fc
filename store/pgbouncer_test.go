//go:build e2e || pgbouncer

package store_test

// The store through a real PgBouncer in transaction mode: the end-to-end
// tier (.ci/tools names the package to install).

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"example.com/pscmessages/store"
	"example.com/pscmessages/store/localpg"
	"example.com/pscmessages/store/localpg/localpgtest"
	"example.com/pscmessages/store/migrations"
)

// bouncedDB creates a fresh database and returns its URL through a new
// transaction-mode PgBouncer with a server pool of 2, and its direct URL.
func bouncedDB(t *testing.T) (pooled, direct string, b *localpg.Bouncer) {
	t.Helper()
	name := fmt.Sprintf("s%d", dbSeq.Add(1))
	if err := cluster.CreateDatabase(testContext(t), name); err != nil {
		t.Fatal(err)
	}
	b = localpgtest.StartBouncer(t, localpg.BouncerOptions{Upstream: cluster})
	return b.URL("postgres", "", name), cluster.SuperuserURL(name), b
}

func openPooled(t *testing.T, url string) *store.Store {
	t.Helper()
	st, err := store.Open(testContext(t), store.Config{ConnString: url, Migrate: true, Pooler: store.PoolerTransaction, MaxConns: 8})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	return st
}

// TestConcurrentReadsThroughTransactionPooler is the observed failure:
// through PgBouncer in transaction mode, concurrent reads answered
// `prepared statement "stmtcache_..." already exists (SQLSTATE 42P05)`,
// because pgx's statement cache assumes one server session per connection.
// With DB_POOLER=transaction every read, write and delete succeeds.
func TestConcurrentReadsThroughTransactionPooler(t *testing.T) {
	pooled, _, _ := bouncedDB(t)
	st := openPooled(t, pooled)
	ctx := testContext(t)
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
	ctx, cancel := context.WithTimeout(testContext(t), 30*time.Second)
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
	if err := migrations.Apply(ctx, conn, nil); err != nil {
		t.Fatal(err)
	}
}
