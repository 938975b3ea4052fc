package store_test

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"example.com/pscmessages/store"
)

// TestCloseDoesNotWaitForKeyCleanup: the expired-key cleanup that the writer
// starts after a batch runs on a context Close cancels: waited for, it could
// hold Close for up to 10 statements of the query timeout each, beyond the
// server's drain. Here the cleanup waits for
// a lock that is held until Close has returned, under a query timeout of 5
// minutes: Close must return first.
func TestCloseDoesNotWaitForKeyCleanup(t *testing.T) {
	st, url := openStoreWith(t, func(c *store.Config) { c.QueryTimeout = 5 * time.Minute })
	ctx := testContext(t)
	holder := connect(t, url)
	tx, err := holder.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, "LOCK TABLE idempotency_keys IN ACCESS EXCLUSIVE MODE"); err != nil {
		t.Fatal(err)
	}
	// A keyless row does not touch idempotency_keys; its batch is the
	// store's first, after which a cleanup starts and waits for the lock.
	if _, err := st.Add(ctx, "no key", ""); err != nil {
		t.Fatal(err)
	}
	watcher := connect(t, url)
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(20 * time.Millisecond) {
		var waiting int
		if err := watcher.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
			WHERE wait_event_type = 'Lock' AND query LIKE '%DELETE FROM idempotency_keys%'`).Scan(&waiting); err != nil {
			t.Fatal(err)
		}
		if waiting > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the key cleanup never started")
		}
	}
	closed := make(chan struct{})
	go func() { st.Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(time.Minute): // it takes milliseconds; old code: 5 minutes
		t.Fatal("Close is waiting for the key cleanup")
	}
}

// TestCloseLetsPendingWritesFinish closes the store while a write waits in
// its statement and others wait behind it: Close returns only after the
// running write is committed and answered; every write answered as stored
// is in the table and every other one was refused as closed; after Close,
// writes are refused at once.
func TestCloseLetsPendingWritesFinish(t *testing.T) {
	ctx := testContext(t)
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

// TestCallsAfterCloseAreErrClosed: a request that got the store before Close
// may call it after. Every call then answers ErrClosed (a 503 for the HTTP
// API, a redelivery for an event), not pgxpool's bare "closed pool", which
// the API answered 500.
func TestCallsAfterCloseAreErrClosed(t *testing.T) {
	st, _ := openStore(t)
	ctx := testContext(t)
	added, err := st.Add(ctx, "before close", "")
	if err != nil {
		t.Fatal(err)
	}
	st.Close()
	calls := map[string]func() error{
		"List": func() error { _, err := st.List(ctx, store.Page{}); return err },
		"Get":  func() error { _, err := st.Get(ctx, added.ID); return err },
		"Update": func() error {
			_, err := st.Update(ctx, added.ID, "changed")
			return err
		},
		"Delete": func() error { return st.Delete(ctx, added.ID) },
		"Add":    func() error { _, err := st.Add(ctx, "after close", ""); return err },
		"AddDeadLetter": func() error {
			return st.AddDeadLetter(ctx, store.DeadLetter{EventID: "1", EventSource: "s", Reason: "r", Payload: []byte("p")})
		},
	}
	for name, call := range calls {
		if err := call(); !errors.Is(err, store.ErrClosed) {
			t.Errorf("%s after Close: %v, want ErrClosed", name, err)
		}
	}
}
