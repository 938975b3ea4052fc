package store

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// idempotencyRetention is how long a key is remembered (7 days). It must
// outlast every redelivery of a Pub/Sub message: a subscription keeps an
// unacknowledged message for 7 days by default (message_retention_duration;
// up to 31 days when configured), and an acknowledged one is redelivered,
// if ever, within minutes. HTTP Idempotency-Key practice is about 24 hours,
// so 7 days covers clients too. A subscription configured to retain
// messages longer than 7 days needs a larger value here.
//
// After it, a key may be used again for a new message: its record is
// deleted. The message it created is not touched.
const idempotencyRetention = 7 * 24 * time.Hour

// Cleanup of expired keys. The writer starts a run after a batch (so it runs
// while the instance has requests, and thus CPU, on Cloud Run), in its own
// goroutine on its own connection so that writes do not wait for it: once
// cleanupEvery has passed since the last run, or at once when the last run
// ended before it had caught up. A run deletes expired records oldest first,
// cleanupBatch per statement, until fewer than cleanupBatch were left
// (caught up) or cleanupBudget has passed.
//
// So it keeps pace with any rate the writer sustains: while behind it runs
// back to back beside the writer, and deleting a record (one small row and
// two index entries, found by the recorded_at index) costs the database less
// than the keyed insert that wrote it (that record plus a message). Once
// caught up, the expired records waiting at any moment are at most those of
// cleanupEvery plus one run's budget of writes.
const (
	cleanupEvery  = time.Minute
	cleanupBatch  = 5000
	cleanupBudget = 10 * time.Second
)

// expireKeys deletes up to $2 records older than $1 microseconds.
const expireKeys = `
DELETE FROM idempotency_keys WHERE key IN (
    SELECT key FROM idempotency_keys
    WHERE recorded_at < now() - $1::bigint * interval '1 microsecond'
    ORDER BY recorded_at LIMIT $2)`

type cleaner struct {
	retention time.Duration
	every     time.Duration

	mu      sync.Mutex
	last    time.Time
	running sync.WaitGroup
	busy    bool
	// ctx is what a cleanup runs on; stop cancels it, so that Close does
	// not wait for a cleanup (up to cleanupBudget) beyond the writes it
	// drains. Nothing is lost: the records expire on a later run.
	ctx    context.Context
	cancel context.CancelFunc
}

func newCleaner() *cleaner {
	c := &cleaner{retention: idempotencyRetention, every: cleanupEvery}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	return c
}

// maybeStart starts a cleanup when none ran for c.every, or when the last
// one had not caught up.
func (c *cleaner) maybeStart(s *Store) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.busy || c.ctx.Err() != nil || time.Since(c.last) < c.every {
		return
	}
	c.busy, c.last = true, time.Now()
	c.running.Add(1)
	retention := c.retention
	go func() {
		defer c.running.Done()
		_, caughtUp, err := s.expireKeys(c.ctx, retention, cleanupBudget)
		if err != nil && c.ctx.Err() == nil {
			// The next run tries again; nothing is lost meanwhile.
			s.logger().Warn("deleting expired idempotency keys failed; retrying in a minute", "error", err.Error())
		}
		c.mu.Lock()
		c.busy = false
		if !caughtUp && err == nil {
			c.last = time.Time{} // behind: the next batch starts another run
		}
		c.mu.Unlock()
	}()
}

// stop cancels a running cleanup and waits for it to return.
func (c *cleaner) stop() {
	c.cancel()
	c.running.Wait()
}

// expireKeys deletes records older than retention, cleanupBatch at a time,
// until it has caught up or budget has passed, and returns how many it
// deleted and whether it caught up.
func (s *Store) expireKeys(ctx context.Context, retention, budget time.Duration) (deleted int, caughtUp bool, err error) {
	ctx, endSpan := s.obs.operation(ctx, "expire idempotency keys")
	defer func() {
		s.obs.cleaned(deleted, !caughtUp, err)
		endSpan(err)
	}()
	deadline := time.Now().Add(budget)
	for {
		var n int64
		err := s.run(ctx, func(ctx context.Context) error {
			tag, err := s.pool.Exec(ctx, expireKeys, retention.Microseconds(), cleanupBatch)
			n = tag.RowsAffected()
			return err
		})
		deleted += int(n)
		switch {
		case err != nil:
			return deleted, false, err
		case n < cleanupBatch:
			return deleted, true, nil
		case time.Now().After(deadline):
			return deleted, false, nil
		}
	}
}

// logger is where the store logs what no caller hears (Config.Logger).
func (s *Store) logger() *slog.Logger {
	if s.cfg.Logger != nil {
		return s.cfg.Logger
	}
	return slog.Default()
}
