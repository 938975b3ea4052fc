package store_test

import (
	"context"
	"testing"
	"time"

	"example.com/pscmessages/store"
)

// TestCloseDoesNotWaitForKeyCleanup: the expired-key cleanup that the writer
// starts after a batch runs on a context Close cancels. Before, it ran on
// context.Background() and Close waited for it: up to 10 statements of the
// query timeout each, beyond the server's drain. Here the cleanup waits for
// a lock that is held until Close has returned, under a query timeout of 5
// minutes: Close must return first.
func TestCloseDoesNotWaitForKeyCleanup(t *testing.T) {
	st, url := openStoreWith(t, func(c *store.Config) { c.QueryTimeout = 5 * time.Minute })
	ctx := context.Background()
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
