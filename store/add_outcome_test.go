package store_test

import (
	"context"
	"fmt"
	"testing"
	"time"
)

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
				plug = addAsync(testContext(t), st, "plug", "")
				waitForLockWaiters(t, url, 1)
			}
			ctx, cancel := context.WithCancel(testContext(t))
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
			again, err := st.Add(testContext(t), "expired", "expired-key")
			if err != nil || again.ID == 0 {
				t.Fatalf("retry with the same key: %+v, %v", again, err)
			}
			if n := count(t, url, "SELECT count(*) FROM messages m JOIN idempotency_keys k ON k.message_id = m.id WHERE k.key = 'expired-key' AND m.id = $1 AND m.content = 'expired'", again.ID); n != 1 {
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
	ctx := testContext(t)
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
