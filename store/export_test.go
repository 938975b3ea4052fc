package store

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5"
)

// MigrateTo migrates conn to version v, for tests of a migration's effect on
// data written by an older schema.
func MigrateTo(ctx context.Context, conn *pgx.Conn, v int32) error {
	return migrateTo(ctx, conn, v)
}

// DeadLetterKey exposes deadLetterKey to tests.
var DeadLetterKey = deadLetterKey

// ExpireKeys runs the cleanup of idempotency records older than retention.
func (s *Store) ExpireKeys(ctx context.Context, retention time.Duration) (int, error) {
	return s.expireKeys(ctx, retention)
}
