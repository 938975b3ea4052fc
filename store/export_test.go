package store

import (
	"context"

	"github.com/jackc/pgx/v5"
)

// MigrateTo migrates conn to version v, for tests of a migration's effect on
// data written by an older schema.
func MigrateTo(ctx context.Context, conn *pgx.Conn, v int32) error {
	m, err := newMigrator(ctx, conn)
	if err != nil {
		return err
	}
	return m.MigrateTo(ctx, v)
}

// DeadLetterKey exposes deadLetterKey to tests.
var DeadLetterKey = deadLetterKey
