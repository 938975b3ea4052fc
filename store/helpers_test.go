package store_test

import (
	"context"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/tern/v2/migrate"

	"example.com/pscmessages/store"
	"example.com/pscmessages/store/migrations"
)

// openStoreWith opens a store on a fresh database with cfg adjusted by
// adjust, and returns it with the database's superuser URL.
func openStoreWith(t testing.TB, adjust func(*store.Config)) (*store.Store, string) {
	t.Helper()
	ctx := testContext(t)
	name := fmt.Sprintf("s%d", dbSeq.Add(1))
	if err := cluster.CreateDatabase(ctx, name); err != nil {
		t.Fatal(err)
	}
	url := cluster.SuperuserURL(name)
	cfg := store.Config{ConnString: url, Migrate: true}
	if adjust != nil {
		adjust(&cfg)
	}
	st, err := store.Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	return st, url
}

// longQueries keeps a statement waiting on a test's lock from timing out.
func longQueries(c *store.Config) { c.QueryTimeout = time.Minute }

func dbConn(t testing.TB, url string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(testContext(t), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func count(t testing.TB, url, sql string, args ...any) int {
	t.Helper()
	var n int
	if err := dbConn(t, url).QueryRow(testContext(t), sql, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}

// lockTable holds an EXCLUSIVE lock on table, which lets readers through
// but makes every INSERT wait, until the returned function is called.
func lockTable(t testing.TB, url, table string) (release func()) {
	t.Helper()
	ctx := testContext(t)
	conn := dbConn(t, url)
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "LOCK TABLE "+table+" IN EXCLUSIVE MODE"); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	release = func() { once.Do(func() { tx.Rollback(ctx) }) }
	t.Cleanup(release)
	return release
}

// waitForLockWaiters waits until n statements of url's database wait on a
// lock: the proof that a write really is blocked where the test put it.
func waitForLockWaiters(t testing.TB, url string, n int) {
	t.Helper()
	conn := dbConn(t, url)
	deadline := time.Now().Add(30 * time.Second)
	for {
		var waiting int
		err := conn.QueryRow(testContext(t),
			"SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'").Scan(&waiting)
		if err != nil {
			t.Fatal(err)
		}
		if waiting >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d statements wait on the test's lock, want %d: the write never reached the database", waiting, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

type addResult struct {
	added store.Added
	err   error
}

func addAsync(ctx context.Context, st *store.Store, content, key string) <-chan addResult {
	ch := make(chan addResult, 1)
	go func() {
		a, err := st.Add(ctx, content, key)
		ch <- addResult{a, err}
	}()
	return ch
}

// receive waits for an answer; a hang fails the test instead of the run.
func receive(t testing.TB, ch <-chan addResult, what string) addResult {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(time.Minute):
		t.Fatalf("%s: no answer within a minute", what)
		return addResult{}
	}
}

// queueBehindPlug makes the writer busy with a "plug" row that waits on a
// lock of messages, starts every call of fn while it is blocked, gives them a
// moment to queue, then lifts the lock. The calls queued meanwhile can only
// be written after the plug, together: this is how the tests put several
// rows into one batch without relying on timing for correctness (the guards
// of each test check that they did share it).
func queueBehindPlug(t *testing.T, st *store.Store, url string, n int, fn func(i int)) store.Added {
	t.Helper()
	release := lockTable(t, url, "messages")
	plug := addAsync(testContext(t), st, "plug", "")
	waitForLockWaiters(t, url, 1)
	var started, done sync.WaitGroup
	for i := range n {
		started.Add(1)
		done.Add(1)
		go func() {
			defer done.Done()
			started.Done()
			fn(i)
		}()
	}
	started.Wait()
	time.Sleep(300 * time.Millisecond) // let them reach the writer's queue
	select {
	case r := <-plug:
		t.Fatalf("the plug was answered while its table was locked: %+v", r)
	default:
	}
	release()
	p := receive(t, plug, "plug")
	if p.err != nil {
		t.Fatalf("plug: %v", p.err)
	}
	done.Wait()
	return p.added
}

// migrateTo applies the migrations up to version v with tern itself, as a
// build of that version left the schema, for tests of what a later
// migration does to the data an older schema holds.
func migrateTo(t testing.TB, conn *pgx.Conn, v int32) {
	t.Helper()
	ctx := testContext(t)
	m, err := migrate.NewMigrator(ctx, conn, migrations.VersionTable)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.LoadMigrations(os.DirFS("migrations")); err != nil {
		t.Fatal(err)
	}
	if err := m.MigrateTo(ctx, v); err != nil {
		t.Fatal(err)
	}
}
