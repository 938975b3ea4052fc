package store_test

// Tests that pin the promises package store makes to its callers, each
// written so that it fails when the promise is broken (issue 13) and guarded
// so that it cannot pass without the scenario it names having happened.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/tern/v2/migrate"

	"example.com/pscmessages/store"
)

// openStoreWith opens a store on a fresh database with cfg adjusted by
// adjust, and returns it with the database's superuser URL.
func openStoreWith(t testing.TB, adjust func(*store.Config)) (*store.Store, string) {
	t.Helper()
	ctx := context.Background()
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
	conn, err := pgx.Connect(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func count(t testing.TB, url, sql string, args ...any) int {
	t.Helper()
	var n int
	if err := dbConn(t, url).QueryRow(context.Background(), sql, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}

// lockTable holds an EXCLUSIVE lock on table, which lets readers through
// but makes every INSERT wait, until the returned function is called.
func lockTable(t testing.TB, url, table string) (release func()) {
	t.Helper()
	ctx := context.Background()
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
		err := conn.QueryRow(context.Background(),
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
	plug := addAsync(context.Background(), st, "plug", "")
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

// TestExpiredCallerIsNeverToldStored: a caller whose context ends while its
// row waits, in a running statement or in the queue behind one, gets an
// error, never a success; the row's fate is then knowable by its key.
func TestExpiredCallerIsNeverToldStored(t *testing.T) {
	cases := []struct {
		name   string
		queued bool // behind a busy writer rather than in the running statement
	}{
		{name: "in the running statement"},
		{name: "queued behind a busy writer", queued: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			st, url := openStoreWith(t, longQueries)
			release := lockTable(t, url, "messages")
			var plug <-chan addResult
			if tc.queued {
				plug = addAsync(context.Background(), st, "plug", "")
				waitForLockWaiters(t, url, 1)
			}
			ctx, cancel := context.WithCancel(context.Background())
			expired := addAsync(ctx, st, "expired", "expired-key")
			if tc.queued {
				time.Sleep(100 * time.Millisecond) // let it reach the queue
			} else {
				waitForLockWaiters(t, url, 1)
			}
			cancel()
			r := receive(t, expired, "the expired Add")
			if r.err == nil {
				t.Fatalf("Add whose context ended while its row waited answered success %+v; nothing was committed yet", r.added)
			}
			if plug != nil {
				select {
				case p := <-plug:
					t.Fatalf("the plug was answered while the table was locked: %+v", p)
				default: // the writer was still busy: the row cannot have been stored
				}
			}
			release()
			if plug != nil {
				if p := receive(t, plug, "plug"); p.err != nil {
					t.Fatalf("plug: %v", p.err)
				}
			}
			// Its fate, by its key: a retry stores it once or finds it stored.
			again, err := st.Add(context.Background(), "expired", "expired-key")
			if err != nil || again.ID == 0 {
				t.Fatalf("retry with the same key: %+v, %v", again, err)
			}
			if n := count(t, url, "SELECT count(*) FROM messages WHERE idempotency_key = 'expired-key' AND id = $1 AND content = 'expired'", again.ID); n != 1 {
				t.Fatalf("retry answered id %d, but %d rows hold it", again.ID, n)
			}
			if n := count(t, url, "SELECT count(*) FROM messages WHERE content = 'expired'"); n != 1 {
				t.Fatalf("%d rows for one keyed message", n)
			}
		})
	}
}

// TestStatementErrorNeverAnsweredAsStored: a row the database refuses inside
// a batch is answered with an error, and every row answered as stored holds
// its own content. The refusal comes from a constraint the code cannot know
// about, so it is the INSERT that fails, not a check in Go.
func TestStatementErrorNeverAnsweredAsStored(t *testing.T) {
	st, url := openStoreWith(t, longQueries)
	ctx := context.Background()
	if _, err := dbConn(t, url).Exec(ctx, "ALTER TABLE messages ADD CONSTRAINT test_refuses_poison CHECK (content IS DISTINCT FROM 'poison')"); err != nil {
		t.Fatal(err)
	}
	const n = 20
	results := make([]addResult, n)
	contents := make([]string, n)
	plug := queueBehindPlug(t, st, url, n, func(i int) {
		contents[i] = fmt.Sprintf("neighbour-%d", i)
		if i == n/2 {
			contents[i] = "poison"
		}
		a, err := st.Add(ctx, contents[i], "")
		results[i] = addResult{a, err}
	})
	if r := results[n/2]; r.err == nil {
		t.Fatalf("the refused row was answered as stored: %+v", r.added)
	}
	if n := count(t, url, "SELECT count(*) FROM messages WHERE content = 'poison'"); n != 0 {
		t.Fatalf("%d refused rows stored", n)
	}
	failed := 0
	for i, r := range results {
		if i == n/2 {
			continue
		}
		if r.err != nil {
			failed++
			continue
		}
		if r.added.ID == 0 || r.added.Content != contents[i] {
			t.Errorf("neighbour %d answered %+v", i, r.added)
			continue
		}
		if c := count(t, url, "SELECT count(*) FROM messages WHERE id = $1 AND content = $2", r.added.ID, contents[i]); c != 1 {
			t.Errorf("neighbour %d answered id %d, which does not hold %q", i, r.added.ID, contents[i])
		}
	}
	// A neighbour answered with an error was not stored either: the
	// statement that failed stored nothing.
	stored := count(t, url, "SELECT count(*) FROM messages WHERE content LIKE 'neighbour-%'")
	if stored != n-1-failed {
		t.Fatalf("%d neighbours stored, %d answered as stored", stored, n-1-failed)
	}
	// The guard that the refused row was written in a batch with
	// neighbours: they failed with it, or (when the batch is split around
	// it) some of them still share a transaction.
	var largest int
	if err := dbConn(t, url).QueryRow(ctx, "SELECT coalesce(max(c), 0) FROM (SELECT count(*) AS c FROM messages WHERE content LIKE 'neighbour-%' GROUP BY xmin::text) x").Scan(&largest); err != nil {
		t.Fatal(err)
	}
	if failed == 0 && largest < 2 {
		t.Fatal("every neighbour was written alone: the refused row never shared a batch")
	}
	t.Logf("plug %d; %d of %d neighbours failed with the refused row; at most %d stored by one statement", plug.ID, failed, n-1, largest)
}

// TestPageLimitBoundary walks every page of tables holding just under, exactly
// and just over a multiple of the page size: no page is larger than its
// limit, none is empty, Next is 0 exactly on the last, and every message is
// listed once, in order. Limits beyond MaxPageSize are clamped.
func TestPageLimitBoundary(t *testing.T) {
	st, url := openStoreWith(t, nil)
	ctx := context.Background()
	conn := dbConn(t, url)
	const limit = 5
	total := 0
	for _, rows := range []int{0, 1, limit - 1, limit, limit + 1, 2 * limit, 2*limit + 1} {
		t.Run(fmt.Sprintf("%d rows", rows), func(t *testing.T) {
			if _, err := conn.Exec(ctx, "TRUNCATE messages RESTART IDENTITY"); err != nil {
				t.Fatal(err)
			}
			if _, err := conn.Exec(ctx, "INSERT INTO messages (content) SELECT 'm' || g FROM generate_series(1, $1::int) g", rows); err != nil {
				t.Fatal(err)
			}
			var got []string
			pages := 0
			for before := int64(0); ; {
				l, err := st.List(ctx, store.Page{Limit: limit, Before: before})
				if err != nil {
					t.Fatal(err)
				}
				pages++
				if len(l.Messages) > limit || (len(l.Messages) == 0 && rows > 0) {
					t.Fatalf("page %d holds %d messages, limit %d", pages, len(l.Messages), limit)
				}
				page := make([]string, len(l.Messages))
				for i, m := range l.Messages {
					page[i] = m.Content
				}
				got = append(page, got...) // pages go back in time
				if l.Next == 0 {
					break
				}
				if pages > rows {
					t.Fatalf("more pages than rows")
				}
				before = l.Next
			}
			want := make([]string, rows)
			for i := range want {
				want[i] = "m" + strconv.Itoa(i+1)
			}
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Fatalf("pages listed %v, want %v", got, want)
			}
			if wantPages := max(1, (rows+limit-1)/limit); pages != wantPages {
				t.Fatalf("%d pages for %d rows at limit %d, want %d", pages, rows, limit, wantPages)
			}
			total++
		})
	}
	if total != 7 {
		t.Fatalf("%d cases ran", total)
	}
	t.Run("clamped to MaxPageSize", func(t *testing.T) {
		if _, err := conn.Exec(ctx, "TRUNCATE messages RESTART IDENTITY"); err != nil {
			t.Fatal(err)
		}
		if _, err := conn.Exec(ctx, "INSERT INTO messages (content) SELECT 'm' || g FROM generate_series(1, $1::int) g", store.MaxPageSize+1); err != nil {
			t.Fatal(err)
		}
		l, err := st.List(ctx, store.Page{Limit: store.MaxPageSize + 500})
		if err != nil {
			t.Fatal(err)
		}
		if len(l.Messages) > store.MaxPageSize || l.Next == 0 {
			t.Fatalf("limit %d over %d rows: %d messages, next %d", store.MaxPageSize+500, store.MaxPageSize+1, len(l.Messages), l.Next)
		}
		if l, err := st.List(ctx, store.Page{}); err != nil || len(l.Messages) != store.DefaultPageSize || l.Next == 0 {
			t.Fatalf("default page: %d messages, next %d, %v; want %d", len(l.Messages), l.Next, err, store.DefaultPageSize)
		}
	})
}

// TestCloseLetsPendingWritesFinish closes the store while a write waits in
// its statement and others wait behind it: Close returns only after the
// running write is committed and answered; every write answered as stored
// is in the table and every other one was refused as closed; after Close,
// writes are refused at once.
func TestCloseLetsPendingWritesFinish(t *testing.T) {
	ctx := context.Background()
	st, url := openStoreWith(t, longQueries)
	release := lockTable(t, url, "messages")
	running := addAsync(ctx, st, "running", "")
	waitForLockWaiters(t, url, 1)
	queued := make([]<-chan addResult, 8)
	for i := range queued {
		queued[i] = addAsync(ctx, st, fmt.Sprintf("queued-%d", i), "")
	}
	time.Sleep(100 * time.Millisecond) // let them reach the queue
	closed := make(chan struct{})
	go func() { st.Close(); close(closed) }()
	select {
	case <-closed:
		t.Fatal("Close returned while a write was still in its statement")
	case r := <-running:
		t.Fatalf("the running write was answered while its table was locked: %+v", r)
	case <-time.After(300 * time.Millisecond):
	}
	release()
	select {
	case <-closed:
	case <-time.After(time.Minute):
		t.Fatal("Close did not return after the pending write finished")
	}
	if r := receive(t, running, "the running write"); r.err != nil || r.added.ID == 0 {
		t.Fatalf("the write running when Close was called: %+v, %v; want it committed", r.added, r.err)
	}
	if n := count(t, url, "SELECT count(*) FROM messages WHERE content = 'running'"); n != 1 {
		t.Fatalf("the running write answered stored, %d rows", n)
	}
	for i, ch := range queued {
		content := fmt.Sprintf("queued-%d", i)
		r := receive(t, ch, content)
		rows := count(t, url, "SELECT count(*) FROM messages WHERE content = $1", content)
		switch {
		case r.err == nil && (r.added.ID == 0 || rows != 1):
			t.Errorf("%s answered stored as %+v, %d rows", content, r.added, rows)
		case r.err != nil && !errors.Is(r.err, store.ErrClosed):
			t.Errorf("%s: %v, want ErrClosed or success", content, r.err)
		case r.err != nil && rows != 0:
			t.Errorf("%s answered closed but stored", content)
		}
	}
	after := addAsync(ctx, st, "after close", "")
	if r := receive(t, after, "Add after Close"); !errors.Is(r.err, store.ErrClosed) {
		t.Fatalf("Add after Close: %+v, %v; want ErrClosed", r.added, r.err)
	}
}

// TestBehindSchemaIsRefused: with migrations off, a database migrated only to
// an earlier version (or recording one) fails Open with ErrSchema, naming
// what is missing, and Open changes nothing.
func TestBehindSchemaIsRefused(t *testing.T) {
	ctx := context.Background()
	latest := store.SchemaVersion()
	if latest < 2 {
		t.Fatalf("%d migrations: nothing to be behind", latest)
	}
	type tc struct {
		name     string
		migrate  int32 // migrate to this version
		record   int32 // then record this version, if > 0
		mentions []string
	}
	var cases []tc
	for v := range latest {
		cases = append(cases, tc{name: fmt.Sprintf("migrated to %d of %d", v, latest), migrate: v})
	}
	// Every table and privilege present, only the recorded version behind:
	// what the version check alone must catch.
	cases = append(cases, tc{name: "records an earlier version", migrate: latest, record: latest - 1,
		mentions: []string{strconv.Itoa(int(latest - 1)), strconv.Itoa(int(latest))}})
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			name := fmt.Sprintf("s%d", dbSeq.Add(1))
			if err := cluster.CreateDatabase(ctx, name); err != nil {
				t.Fatal(err)
			}
			url := cluster.SuperuserURL(name)
			conn := dbConn(t, url)
			m, err := migrate.NewMigrator(ctx, conn, store.VersionTable)
			if err != nil {
				t.Fatal(err)
			}
			if err := m.LoadMigrations(os.DirFS("migrations")); err != nil {
				t.Fatal(err)
			}
			if err := m.MigrateTo(ctx, c.migrate); err != nil {
				t.Fatal(err)
			}
			version := c.migrate
			if c.record > 0 {
				if _, err := conn.Exec(ctx, "UPDATE "+store.VersionTable+" SET version = $1", c.record); err != nil {
					t.Fatal(err)
				}
				version = c.record
			}
			st, err := store.Open(ctx, store.Config{ConnString: url, Migrate: false})
			if err == nil {
				st.Close()
				t.Fatalf("Open with migrations off accepted a schema at version %d of %d", version, latest)
			}
			if !errors.Is(err, store.ErrSchema) {
				t.Fatalf("Open: %v, want ErrSchema", err)
			}
			t.Logf("Open: %v", err)
			detail := strings.TrimPrefix(err.Error(), store.ErrSchema.Error())
			if len(strings.TrimLeft(detail, ": ")) < 10 {
				t.Fatalf("the schema error %q does not say what is missing", err)
			}
			for _, s := range c.mentions {
				if !strings.Contains(detail, s) {
					t.Errorf("the schema error %q does not mention %q", err, s)
				}
			}
			var now int32
			if err := conn.QueryRow(ctx, "SELECT version FROM "+store.VersionTable).Scan(&now); err != nil || now != version {
				t.Fatalf("after Open with migrations off the version is %d (%v), was %d", now, err, version)
			}
		})
	}
}

// TestWriteRetriedAfterConnectionReset: a pooled idle connection reset by
// something between the pool and the server (here a proxy) fails the next
// write before anything reached the server. That write is retried on a fresh
// connection: it succeeds on its first request and stores one row.
//
// The pool holds one connection (pool_max_conns=1), so the write cannot be
// handed a healthy one instead, and the test proves that the write ran twice:
// it acquired one connection more than the same write does without a reset.
func TestWriteRetriedAfterConnectionReset(t *testing.T) {
	ctx := context.Background()
	name := fmt.Sprintf("s%d", dbSeq.Add(1))
	if err := cluster.CreateDatabase(ctx, name); err != nil {
		t.Fatal(err)
	}
	url := cluster.SuperuserURL(name)
	proxy := startResetProxy(t, net.JoinHostPort(cluster.Host(), strconv.Itoa(cluster.Port())))
	st, err := store.Open(ctx, store.Config{ConnString: proxy.via(t, url), Migrate: true, MaxConns: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	acquires := func() int64 { return st.Pool().Stat().AcquireCount() }
	// The first write may start background work (such as expiring old
	// idempotency keys) on the pool; wait until the pool is quiet.
	if _, err := st.Add(ctx, "first", ""); err != nil {
		t.Fatal(err)
	}
	for last, quiet := acquires(), 0; quiet < 3; {
		time.Sleep(100 * time.Millisecond)
		if now := acquires(); now != last || st.Pool().Stat().AcquiredConns() != 0 {
			last, quiet = now, 0
		} else {
			quiet++
		}
	}
	// What the same write costs without a reset.
	before := acquires()
	if _, err := st.Add(ctx, "control", "key-control"); err != nil {
		t.Fatal(err)
	}
	perWrite := acquires() - before
	// pgxpool pings a connection idle for over a second before handing it
	// out, which would find the reset itself and hide the write's retry. So
	// the reset and the write follow the previous write at once, and an
	// attempt that took a second or more does not count.
	const attempts = 5
	for attempt := range attempts {
		start := time.Now()
		if _, err := st.Add(ctx, fmt.Sprintf("warm-%d", attempt), ""); err != nil {
			t.Fatal(err)
		}
		conns := proxy.connections()
		if n := proxy.resetAll(); n != 1 {
			t.Fatalf("reset %d connections, want the pool's one", n)
		}
		content := fmt.Sprintf("after-reset-%d", attempt)
		before := acquires()
		a, err := st.Add(ctx, content, "key-"+content)
		elapsed := time.Since(start)
		if err != nil {
			t.Fatalf("the write after a connection reset failed: %v", err)
		}
		if a.ID == 0 || a.Replayed || a.Content != content {
			t.Fatalf("the write after a connection reset: %+v", a)
		}
		if n := count(t, url, "SELECT count(*) FROM messages WHERE content = $1 AND idempotency_key = $2", content, "key-"+content); n != 1 {
			t.Fatalf("%d rows for one write", n)
		}
		if proxy.connections() == conns {
			t.Fatal("the write opened no new connection: it never met the reset one")
		}
		if elapsed >= time.Second {
			t.Logf("attempt %d took %v: the pool may have pinged the connection first; again", attempt, elapsed)
			continue
		}
		if got := acquires() - before; got <= perWrite {
			t.Fatalf("the write acquired %d connections, as many as without a reset (%d): it was not retried", got, perWrite)
		} else {
			t.Logf("the write acquired %d connections, %d without a reset", got, perWrite)
		}
		return
	}
	t.Fatalf("no attempt in %d was quick enough to exercise the write's retry", attempts)
}

// TestIdempotentAddsInOneBatch sends each of four keys ten times while the
// writer is held busy, so that they queue and are written together, with a
// keyless witness beside each: one row per key, every repeat answered as a
// replay of it. Every row written, the four keyed ones and the 40 witnesses,
// shares one transaction (xmin): the repeats, queued among them, were in
// the same batch, which is the case the test is named for.
func TestIdempotentAddsInOneBatch(t *testing.T) {
	st, url := openStoreWith(t, longQueries)
	ctx := context.Background()
	const n = 40
	results := make([]addResult, n)
	plug := queueBehindPlug(t, st, url, 2*n, func(i int) {
		if i%2 == 1 {
			if _, err := st.Add(ctx, fmt.Sprintf("witness-%d", i), ""); err != nil {
				t.Error(err)
			}
			return
		}
		a, err := st.Add(ctx, "same", fmt.Sprintf("key-%d", (i/2)%4))
		results[i/2] = addResult{a, err}
	})
	byKey := map[int]int64{}
	replays := 0
	for i, r := range results {
		if r.err != nil {
			t.Fatalf("request %d: %v", i, r.err)
		}
		if id, ok := byKey[i%4]; ok && id != r.added.ID {
			t.Fatalf("key-%d answered ids %d and %d", i%4, id, r.added.ID)
		}
		byKey[i%4] = r.added.ID
		if r.added.ID == 0 || r.added.Content != "same" {
			t.Fatalf("request %d answered %+v", i, r.added)
		}
		if r.added.Replayed {
			replays++
		}
	}
	if replays != n-4 {
		t.Fatalf("%d replays, want %d", replays, n-4)
	}
	if rows := count(t, url, "SELECT count(*) FROM messages WHERE content = 'same'"); rows != 4 {
		t.Fatalf("%d rows, want 4", rows)
	}
	var rows, xmins int
	if err := dbConn(t, url).QueryRow(ctx, "SELECT count(*), count(DISTINCT xmin::text) FROM messages WHERE id <> $1", plug.ID).Scan(&rows, &xmins); err != nil {
		t.Fatal(err)
	}
	if rows != 4+n || xmins != 1 {
		t.Fatalf("%d rows written by %d transactions, want %d by one: the requests did not share a batch", rows, xmins, 4+n)
	}
}
