package store

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// IdempotencyRetention is how long a key is remembered (7 days). It must
// outlast every redelivery of a Pub/Sub message: a subscription keeps an
// unacknowledged message for 7 days by default (message_retention_duration;
// up to 31 days when configured), and an acknowledged one is redelivered,
// if ever, within minutes. HTTP Idempotency-Key practice is about 24 hours,
// so 7 days covers clients too. A subscription configured to retain
// messages longer than 7 days needs a larger value here.
//
// After it, a key may be used again for a new message: its record is
// deleted and the key is cleared from the message it created.
const IdempotencyRetention = 7 * 24 * time.Hour

// Cleanup of expired keys. The writer starts one at most every
// cleanupEvery, after a batch (so it runs while the instance has requests,
// and thus CPU, on Cloud Run), in its own goroutine so that writes do not
// wait for it. One run deletes at most cleanupRuns × cleanupBatch records
// (10 × 1,000), oldest first; a backlog larger than that shrinks by that
// much per minute per instance.
const (
	cleanupEvery = time.Minute
	cleanupBatch = 1000
	cleanupRuns  = 10
)

// expireKeys deletes up to $2 records older than $1 seconds and clears the
// key of the messages they created, so that the key can store a new message.
const expireKeys = `
WITH expired AS (
    DELETE FROM idempotency_keys WHERE key IN (
        SELECT key FROM idempotency_keys
        WHERE recorded_at < now() - $1::bigint * interval '1 second'
        ORDER BY recorded_at LIMIT $2)
    RETURNING key, message_id
), cleared AS (
    UPDATE messages m SET idempotency_key = NULL
    FROM expired e WHERE m.id = e.message_id AND m.idempotency_key = e.key
)
SELECT count(*) FROM expired`

type cleaner struct {
	mu      sync.Mutex
	last    time.Time
	running sync.WaitGroup
	busy    bool
	// ctx is what a cleanup runs on; stop cancels it, so that Close does
	// not wait for a cleanup (up to cleanupRuns statements of the query
	// timeout each) beyond the writes it drains. Nothing is lost: the
	// records expire on a later run.
	ctx    context.Context
	cancel context.CancelFunc
}

func newCleaner() *cleaner {
	c := &cleaner{}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	return c
}

// maybeStart starts a cleanup when none ran for cleanupEvery.
func (c *cleaner) maybeStart(s *Store) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.busy || c.ctx.Err() != nil || time.Since(c.last) < cleanupEvery {
		return
	}
	c.busy, c.last = true, time.Now()
	c.running.Add(1)
	go func() {
		defer c.running.Done()
		if _, err := s.expireKeys(c.ctx, IdempotencyRetention); err != nil && c.ctx.Err() == nil {
			// The next run tries again; nothing is lost meanwhile.
			slog.Warn("deleting expired idempotency keys failed", "error", err.Error())
		}
		c.mu.Lock()
		c.busy = false
		c.mu.Unlock()
	}()
}

// stop cancels a running cleanup and waits for it to return.
func (c *cleaner) stop() {
	c.cancel()
	c.running.Wait()
}

// expireKeys deletes records older than retention, in bounded batches, and
// returns how many it deleted.
func (s *Store) expireKeys(ctx context.Context, retention time.Duration) (int, error) {
	total := 0
	for range cleanupRuns {
		var n int
		err := s.run(ctx, func(ctx context.Context) error {
			return s.pool.QueryRow(ctx, expireKeys, int64(retention/time.Second), cleanupBatch).Scan(&n)
		})
		total += n
		if err != nil || n < cleanupBatch {
			return total, err
		}
	}
	return total, nil
}
