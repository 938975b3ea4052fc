package store

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// Pool is the store's pool, for tests of how it uses connections.
func (s *Store) Pool() *pgxpool.Pool { return s.pool }

// MaxDeadLetterText is how much of an id, source or type a dead letter
// keeps, for tests of what it keeps.
const MaxDeadLetterText = maxDeadLetterText

// IdempotencyRetention is how long a key is remembered, for tests of its
// expiry.
const IdempotencyRetention = idempotencyRetention

// DeadLetterKey exposes deadLetterKey to tests.
var DeadLetterKey = deadLetterKey

// ExpireKeys runs one cleanup of idempotency records older than retention,
// with the writer's time budget, and returns how many it deleted.
func (s *Store) ExpireKeys(ctx context.Context, retention time.Duration) (int, error) {
	n, _, err := s.expireKeys(ctx, retention, cleanupBudget)
	return n, err
}

// WaitForCleanup waits for the cleanup the writer starts after its first
// batch to end (for up to 10 s for it to start). A test that ages records
// by hand waits for it, so that ExpireKeys, not that run, finds them.
func (s *Store) WaitForCleanup() {
	c := s.writer.clean
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		c.mu.Lock()
		started := !c.last.IsZero()
		c.mu.Unlock()
		if started {
			break
		}
	}
	c.running.Wait()
}

// ShortenKeyRetention makes the writer's cleanup expire records older than
// retention and run every every, for benchmarks that cannot wait 7 days.
func (s *Store) ShortenKeyRetention(retention, every time.Duration) {
	c := s.writer.clean
	c.mu.Lock()
	defer c.mu.Unlock()
	c.retention, c.every = retention, every
}

// CommitBatch stores contents (keyless) as one batch of the group-commit
// writer, as if they had been queued together, and returns each row's error.
// Tests use it for what depends on the batch a row shares, which Add leaves
// to timing.
func (s *Store) CommitBatch(contents []string) []error {
	rows := make([]*writeRequest, len(contents))
	for i, c := range contents {
		rows[i] = &writeRequest{content: c}
	}
	results := make(map[*writeRequest]writeResult, len(rows))
	s.writer.commit(rows, results)
	errs := make([]error, len(rows))
	for i, r := range rows {
		errs[i] = results[r].err
	}
	return errs
}

// PageOfBytes is a Page whose content is bounded by maxBytes rather than
// MaxPageBytes.
func PageOfBytes(before int64, limit, maxBytes int) Page {
	return Page{Before: before, Limit: limit, maxBytes: maxBytes}
}
