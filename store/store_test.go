package store_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"example.com/pscmessages/store"
	"example.com/pscmessages/store/localpg"
	"example.com/pscmessages/store/localpg/localpgtest"
)

var cluster *localpg.Cluster

func TestMain(m *testing.M) {
	os.Exit(localpgtest.RunWithCluster(m, localpg.Options{}, &cluster))
}

var dbSeq atomic.Int64

// testTimeout bounds what each test waits for the database: a lock that is
// never released (a migration lock left on a session, say) fails the test
// within seconds instead of hanging until go test's own timeout.
const testTimeout = 30 * time.Second

// testContext is a context with testTimeout that ends with the test.
func testContext(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

// openStore opens a store on a fresh database and returns it with its URL.
func openStore(t testing.TB) (*store.Store, string) {
	t.Helper()
	ctx := testContext(t)
	name := fmt.Sprintf("s%d", dbSeq.Add(1))
	if err := cluster.CreateDatabase(ctx, name); err != nil {
		t.Fatal(err)
	}
	url := cluster.SuperuserURL(name)
	st, err := store.Open(ctx, store.Config{ConnString: url, Migrate: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	return st, url
}

func TestGroupCommitUnderConcurrency(t *testing.T) {
	st, _ := openStore(t)
	ctx := testContext(t)
	const writers, each = 32, 50
	ids := make(chan int64, writers*each)
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				content := fmt.Sprintf("w%d-%d", w, i)
				a, err := st.Add(ctx, content, "")
				if err != nil {
					t.Error(err)
					return
				}
				if a.Content != content || a.AlreadyStored || a.ID == 0 || a.CreatedAt.IsZero() {
					t.Errorf("Add(%q) = %+v", content, a)
				}
				// The answer names the row holding this very content.
				got, err := st.Get(ctx, a.ID)
				if err != nil || got.Content != content {
					t.Errorf("row %d = %q, %v; want %q", a.ID, got.Content, err, content)
				}
				ids <- a.ID
			}
		}()
	}
	wg.Wait()
	close(ids)
	seen := map[int64]bool{}
	for id := range ids {
		if seen[id] {
			t.Fatalf("id %d answered twice", id)
		}
		seen[id] = true
	}
	if len(seen) != writers*each {
		t.Fatalf("%d ids, want %d", len(seen), writers*each)
	}
}

// TestMixedBatchesWithEqualContent sends keyed and keyless writes of the same
// content together, some keys already stored: every answer must name a row
// that holds its own content and key, and no row may be answered twice.
func TestMixedBatchesWithEqualContent(t *testing.T) {
	st, url := openStore(t)
	ctx := testContext(t)
	old, err := st.Add(ctx, "same", "old-key")
	if err != nil {
		t.Fatal(err)
	}
	const n = 60
	results := make([]store.Added, n)
	keys := make([]string, n)
	var wg sync.WaitGroup
	for i := range n {
		switch i % 3 {
		case 0: // keyless
		case 1:
			keys[i] = fmt.Sprintf("k%d", i)
		case 2:
			keys[i] = "old-key"
		}
		wg.Go(func() {
			a, err := st.Add(ctx, "same", keys[i])
			if err != nil {
				t.Error(err)
			}
			results[i] = a
		})
	}
	wg.Wait()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	fresh := map[int64]bool{}
	for i, a := range results {
		if keys[i] == "old-key" {
			if !a.AlreadyStored || a.ID != old.ID {
				t.Errorf("request %d with the stored key: %+v, want a replay of %d", i, a, old.ID)
			}
			continue
		}
		if a.AlreadyStored || fresh[a.ID] {
			t.Fatalf("request %d: %+v: replayed or answered twice", i, a)
		}
		fresh[a.ID] = true
		var key *string
		if err := conn.QueryRow(ctx, "SELECT (SELECT key FROM idempotency_keys WHERE message_id = m.id) FROM messages m WHERE m.id = $1", a.ID).Scan(&key); err != nil {
			t.Fatalf("request %d: row %d: %v", i, a.ID, err)
		}
		if (key == nil) != (keys[i] == "") || (key != nil && *key != keys[i]) {
			t.Errorf("request %d (key %q) was answered with row %d, whose key is %v", i, keys[i], a.ID, key)
		}
	}
	var rows int
	conn.QueryRow(ctx, "SELECT count(*) FROM messages").Scan(&rows)
	if want := 1 + 2*n/3; rows != want {
		t.Fatalf("%d rows, want %d", rows, want)
	}
	// The point is rows sharing a statement: one transaction, one xmin.
	var largest int
	conn.QueryRow(ctx, "SELECT max(n) FROM (SELECT count(*) AS n FROM messages WHERE id > $1 GROUP BY xmin::text) b", old.ID).Scan(&largest)
	if largest < 2 {
		t.Fatalf("no batch held more than %d row: the mapping was not exercised", largest)
	}
}

func TestListPagesNewestFirstOldestFirstWithin(t *testing.T) {
	st, _ := openStore(t)
	ctx := testContext(t)
	for i := 1; i <= 7; i++ {
		if _, err := st.Add(ctx, fmt.Sprint(i), ""); err != nil {
			t.Fatal(err)
		}
	}
	cases := []struct {
		page store.Page
		want string
		next bool
	}{
		{store.Page{Limit: 3}, "[5 6 7]", true},
		{store.Page{Limit: 3, Before: 5}, "[2 3 4]", true},
		{store.Page{Limit: 3, Before: 2}, "[1]", false},
		{store.Page{}, "[1 2 3 4 5 6 7]", false},
	}
	for _, tc := range cases {
		l, err := st.List(ctx, tc.page)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, m := range l.Messages {
			got = append(got, m.Content)
		}
		if fmt.Sprint(got) != tc.want || (l.Next != 0) != tc.next {
			t.Errorf("List(%+v) = %v next=%d, want %s next=%v", tc.page, got, l.Next, tc.want, tc.next)
		}
	}
}

func TestNotFound(t *testing.T) {
	st, _ := openStore(t)
	ctx := testContext(t)
	if _, err := st.Get(ctx, 99); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("Get: %v", err)
	}
	if _, err := st.Update(ctx, 99, "x"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("Update: %v", err)
	}
	if err := st.Delete(ctx, 99); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("Delete: %v", err)
	}
	if _, err := st.Get(ctx, 1<<40); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("Get beyond int4: %v", err)
	}
}

// TestReadSurvivesTerminatedConnections: a restart or failover kills the
// pool's idle connections; the next read is retried on a fresh one.
func TestReadSurvivesTerminatedConnections(t *testing.T) {
	st, _ := openStore(t)
	ctx := testContext(t)
	if _, err := st.List(ctx, store.Page{}); err != nil {
		t.Fatal(err)
	}
	if err := cluster.Exec(ctx, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'postgres' AND pid <> pg_backend_pid() AND backend_type = 'client backend'"); err != nil {
		t.Fatal(err)
	}
	if _, err := st.List(ctx, store.Page{}); err != nil {
		t.Fatalf("List after the connections were terminated: %v", err)
	}
}

func TestUnavailableIsTyped(t *testing.T) {
	ctx := testContext(t)
	c := localpgtest.Start(t, localpg.Options{})
	st, err := store.Open(ctx, store.Config{ConnString: c.SuperuserURL("postgres"), Migrate: true})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if err := c.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	_, err = st.Add(ctx, "x", "")
	if !errors.Is(err, store.ErrUnavailable) {
		t.Fatalf("Add with the database down: %v, want ErrUnavailable", err)
	}
	if _, err := st.List(ctx, store.Page{}); !errors.Is(err, store.ErrUnavailable) {
		t.Fatalf("List with the database down: %v", err)
	}
	if _, err := store.Open(ctx, store.Config{ConnString: c.SuperuserURL("postgres"), Migrate: true}); !errors.Is(err, store.ErrUnavailable) {
		t.Fatalf("Open with the database down: %v", err)
	}
}

func TestDeadLetterKeptOnce(t *testing.T) {
	st, url := openStore(t)
	ctx := testContext(t)
	d := store.DeadLetter{EventID: "1", EventSource: "//pubsub/x", EventType: "t", Reason: "bad", Payload: []byte{0xff, 0}}
	for range 2 {
		if err := st.AddDeadLetter(ctx, d); err != nil {
			t.Fatal(err)
		}
	}
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var n int
	var payload []byte
	if err := conn.QueryRow(ctx, "SELECT count(*) OVER (), payload FROM dead_letters").Scan(&n, &payload); err != nil || n != 1 || string(payload) != string(d.Payload) {
		t.Fatalf("dead letters: n=%d payload=%x err=%v", n, payload, err)
	}
}

func TestMigrationsOffNeedSchema(t *testing.T) {
	ctx := testContext(t)
	name := fmt.Sprintf("s%d", dbSeq.Add(1))
	if err := cluster.CreateDatabase(ctx, name); err != nil {
		t.Fatal(err)
	}
	_, err := store.Open(ctx, store.Config{ConnString: cluster.SuperuserURL(name), Migrate: false})
	if !errors.Is(err, store.ErrSchema) {
		t.Fatalf("Open without a schema and migrations off: %v, want ErrSchema", err)
	}
}
