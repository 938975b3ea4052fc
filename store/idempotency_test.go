package store_test

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"example.com/pscmessages/store"
)

// TestKeyReusedForOtherContent: the same key with other
// content is refused, one after the other and within one batch.
func TestKeyReusedForOtherContent(t *testing.T) {
	st, url := openStore(t)
	ctx := testContext(t)
	if _, err := st.Add(ctx, "A", "pubsub:t#7"); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Add(ctx, "B", "pubsub:t#7"); !errors.Is(err, store.ErrKeyReused) {
		t.Fatalf("Add B under the key of A: %v, want ErrKeyReused", err)
	}
	// Concurrently, in shared batches: exactly one content wins per key.
	var wg sync.WaitGroup
	var mu sync.Mutex
	stored, reused := map[string]string{}, 0
	for i := range 200 {
		wg.Go(func() {
			key, content := fmt.Sprintf("http:k%d", i/2), fmt.Sprint("content ", i%2)
			_, err := st.Add(ctx, content, key)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case errors.Is(err, store.ErrKeyReused):
				reused++
			case err != nil:
				t.Error(err)
			default:
				if c, ok := stored[key]; ok {
					t.Errorf("%s stored %q and %q", key, c, content)
				}
				stored[key] = content
			}
		})
	}
	wg.Wait()
	if len(stored) != 100 || reused != 100 {
		t.Fatalf("%d keys stored, %d refused; want 100 each", len(stored), reused)
	}
	if n := queryInt(t, url, "SELECT count(*) FROM messages"); n != 101 {
		t.Fatalf("%d rows, want 101", n)
	}
}

// TestRetryGetsTheFirstAnswer: a retry gets the first answer
// whatever happened to the row since; the key never stores anything else.
func TestRetryGetsTheFirstAnswer(t *testing.T) {
	st, url := openStore(t)
	ctx := testContext(t)
	const key = "http:K"
	first, err := st.Add(ctx, "a", key)
	if err != nil {
		t.Fatal(err)
	}
	same := func(step string) {
		t.Helper()
		a, err := st.Add(ctx, "a", key)
		if err != nil {
			t.Fatalf("%s: retry: %v", step, err)
		}
		if !a.AlreadyStored || a.ID != first.ID || !a.CreatedAt.Equal(first.CreatedAt) || a.Content != "a" {
			t.Fatalf("%s: retry answered %+v, want the first answer %+v", step, a, first)
		}
		if _, err := st.Add(ctx, "b", key); !errors.Is(err, store.ErrKeyReused) {
			t.Fatalf("%s: other content under the key: %v, want ErrKeyReused", step, err)
		}
	}
	same("unchanged")
	if _, err := st.Update(ctx, first.ID, "b"); err != nil {
		t.Fatal(err)
	}
	same("after PUT b")
	if err := st.Delete(ctx, first.ID); err != nil {
		t.Fatal(err)
	}
	same("after DELETE")
	if n := queryInt(t, url, "SELECT count(*) FROM messages"); n != 0 {
		t.Fatalf("a retry after DELETE stored a row: %d rows", n)
	}
}

// TestReplaysDoNotBurnIDs: 1 row and 100 replays of it draw one id, so
// retries cannot exhaust the id sequence.
func TestReplaysDoNotBurnIDs(t *testing.T) {
	st, url := openStore(t)
	ctx := testContext(t)
	for range 101 {
		if _, err := st.Add(ctx, "x", "http:replayed"); err != nil {
			t.Fatal(err)
		}
	}
	if n := queryInt(t, url, "SELECT last_value FROM messages_id_seq"); n != 1 {
		t.Fatalf("sequence at %d after 1 row and 100 replays, want 1", n)
	}
}

// TestIDsBeyond32Bits: past 2^31, writes and reads go on: an id never
// passes through a 32-bit integer.
func TestIDsBeyond32Bits(t *testing.T) {
	st, url := openStore(t)
	ctx := testContext(t)
	if _, err := connect(t, url).Exec(ctx, "SELECT setval('messages_id_seq', 2147483647)"); err != nil {
		t.Fatal(err)
	}
	var ids []int64
	for _, key := range []string{"", "http:big"} {
		a, err := st.Add(ctx, "beyond", key)
		if err != nil {
			t.Fatalf("Add past 2^31 (key %q): %v", key, err)
		}
		if a.ID <= 1<<31-1 {
			t.Fatalf("id %d", a.ID)
		}
		ids = append(ids, a.ID)
	}
	if m, err := st.Get(ctx, ids[1]); err != nil || m.Content != "beyond" {
		t.Fatalf("Get(%d) = %+v, %v", ids[1], m, err)
	}
	if l, err := st.List(ctx, store.Page{Limit: 1}); err != nil || len(l.Messages) != 1 || l.Next != ids[1] {
		t.Fatalf("List = %+v, %v", l, err)
	}
}

// TestKeysStoredBeforeTheUpgrade: keys of rows written before the
// idempotency_keys table existed, in messages.idempotency_key, are
// backfilled by 006 and keep deduplicating after 007 drops that column.
func TestKeysStoredBeforeTheUpgrade(t *testing.T) {
	ctx := testContext(t)
	name := fmt.Sprintf("s%d", dbSeq.Add(1))
	if err := cluster.CreateDatabase(ctx, name); err != nil {
		t.Fatal(err)
	}
	url := cluster.SuperuserURL(name)
	conn := connect(t, url)
	migrateTo(t, conn, 3)
	var want int64
	if err := conn.QueryRow(ctx, "INSERT INTO messages (content, idempotency_key) VALUES ('old', 'http:before') RETURNING id").Scan(&want); err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(ctx, store.Config{ConnString: url, Migrate: true})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	a, err := st.Add(ctx, "old", "http:before")
	if err != nil || !a.AlreadyStored || a.ID != want {
		t.Errorf("retry of http:before: %+v, %v; want a replay of %d", a, err, want)
	}
	if _, err := st.Add(ctx, "other", "http:before"); !errors.Is(err, store.ErrKeyReused) {
		t.Errorf("other content under http:before: %v, want ErrKeyReused", err)
	}
	if n := queryInt(t, url, "SELECT count(*) FROM messages"); n != 1 {
		t.Fatalf("%d rows, want 1", n)
	}
	if n := queryInt(t, url, "SELECT count(*) FROM information_schema.columns WHERE table_name = 'messages' AND column_name = 'idempotency_key'"); n != 0 {
		t.Fatal("messages.idempotency_key is still there after the migrations")
	}
}

// TestExpiredKeysAreReleased: after IdempotencyRetention the record is
// deleted, in bounded batches, and the key stores a new message.
func TestExpiredKeysAreReleased(t *testing.T) {
	st, url := openStore(t)
	ctx := testContext(t)
	first, err := st.Add(ctx, "a", "http:old")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Add(ctx, "x", "http:recent"); err != nil {
		t.Fatal(err)
	}
	st.WaitForCleanup()
	conn := connect(t, url)
	if _, err := conn.Exec(ctx, "UPDATE idempotency_keys SET recorded_at = now() - $1::bigint * interval '1 second' - interval '1 minute' WHERE key = 'http:old'",
		int64(store.IdempotencyRetention/time.Second)); err != nil {
		t.Fatal(err)
	}
	if n, err := st.ExpireKeys(ctx, store.IdempotencyRetention); err != nil || n != 1 {
		t.Fatalf("ExpireKeys = %d, %v; want 1", n, err)
	}
	again, err := st.Add(ctx, "b", "http:old")
	if err != nil || again.AlreadyStored || again.ID == first.ID {
		t.Fatalf("the expired key: %+v, %v; want a new message", again, err)
	}
	if r, err := st.Add(ctx, "x", "http:recent"); err != nil || !r.AlreadyStored {
		t.Fatalf("a recent key: %+v, %v; want a replay", r, err)
	}
}

// TestReusedKeyInOneBatchWithItsRetry: a stored key's retry is a replay and
// its reuse refused, whichever of them comes first in a shared batch.
func TestReusedKeyInOneBatchWithItsRetry(t *testing.T) {
	st, _ := openStore(t)
	ctx := testContext(t)
	first, err := st.Add(ctx, "a", "http:K")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for i := range 200 {
		wg.Go(func() {
			content := []string{"b", "a"}[i%2] // the reuse first, then the retry
			a, err := st.Add(ctx, content, "http:K")
			switch {
			case content == "b" && !errors.Is(err, store.ErrKeyReused):
				t.Errorf("reuse: %+v, %v; want ErrKeyReused", a, err)
			case content == "a" && (err != nil || !a.AlreadyStored || a.ID != first.ID):
				t.Errorf("retry: %+v, %v; want a replay of %d", a, err, first.ID)
			}
		})
	}
	wg.Wait()
}

// TestIdempotentAddsInOneBatch sends each of four keys ten times while the
// writer is held busy, so that they queue and are written together, with a
// keyless witness beside each: one row per key, every repeat answered as a
// replay of it. Every row written, the four keyed ones and the 40 witnesses,
// shares one transaction (xmin): the repeats, queued among them, were in
// the same batch, which is the case the test is named for.
func TestIdempotentAddsInOneBatch(t *testing.T) {
	st, url := openStoreWith(t, longQueries)
	ctx := testContext(t)
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
		if r.added.AlreadyStored {
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

// TestCleanupCatchesUpWithABacklog: one cleanup deletes every expired record
// however many there are (within its time budget), not a fixed number per
// minute, and never rewrites the messages the keys created. Before the fix a
// run deleted at most 10,000 records, so keyed writes above ~167/s grew the
// table without bound, and every expired key rewrote its message.
func TestCleanupCatchesUpWithABacklog(t *testing.T) {
	st, url := openStore(t)
	ctx := testContext(t)
	kept, err := st.Add(ctx, "kept", "http:expiring")
	if err != nil {
		t.Fatal(err)
	}
	st.WaitForCleanup()
	const backlog = 25_000
	conn := connect(t, url)
	if _, err := conn.Exec(ctx, `INSERT INTO idempotency_keys (key, fingerprint, message_id, created_at, recorded_at)
		SELECT 'http:backlog-' || g, '\x00', g, now(), now() - interval '8 days' FROM generate_series(1, $1::int) g`, backlog); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "UPDATE idempotency_keys SET recorded_at = now() - interval '8 days' WHERE key = 'http:expiring'"); err != nil {
		t.Fatal(err)
	}
	version := func() string {
		var v string
		if err := conn.QueryRow(ctx, "SELECT xmin::text || ctid::text FROM messages WHERE id = $1", kept.ID).Scan(&v); err != nil {
			t.Fatal(err)
		}
		return v
	}
	before := version()
	n, err := st.ExpireKeys(ctx, store.IdempotencyRetention)
	if err != nil || n != backlog+1 {
		t.Fatalf("one cleanup deleted %d records, %v; want all %d expired ones", n, err, backlog+1)
	}
	if left := queryInt(t, url, "SELECT count(*) FROM idempotency_keys"); left != 0 {
		t.Fatalf("%d records left", left)
	}
	if version() != before {
		t.Error("the cleanup rewrote the message of an expired key")
	}
}
