package deadletter

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"example.com/pscmessages/store"
)

// ErrNotFound means no dead letter has the id asked for.
var ErrNotFound = errors.New("no such dead letter")

// columns is what an operator reads of a dead letter besides its payload;
// [OperatorPrivileges] grants SELECT on them. Rows kept before payloads
// were kept whole lack the size and digest columns: those are computed from
// what was kept.
const columns = `id, received_at, coalesce(event_id, ''), coalesce(event_source, ''), coalesce(event_type, ''), reason,
	coalesce(payload_size, octet_length(coalesce(payload, ''))), coalesce(payload_sha256, sha256(coalesce(payload, '')))`

// List returns up to limit dead letters, newest first, without their
// payloads.
func List(ctx context.Context, conn *pgx.Conn, limit int) ([]store.DeadLetter, error) {
	rows, err := conn.Query(ctx, `SELECT `+columns+` FROM dead_letters ORDER BY id DESC LIMIT $1`, limit)
	if err != nil {
		return nil, fmt.Errorf("listing dead letters: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (store.DeadLetter, error) {
		var d store.DeadLetter
		err := row.Scan(&d.ID, &d.ReceivedAt, &d.EventID, &d.EventSource, &d.EventType, &d.Reason, &d.PayloadSize, &d.PayloadSHA256)
		return d, err
	})
	if err != nil {
		return nil, fmt.Errorf("listing dead letters: %w", err)
	}
	return out, nil
}

// Get returns one dead letter with its payload, or an error wrapping
// [ErrNotFound].
func Get(ctx context.Context, conn *pgx.Conn, id int64) (store.DeadLetter, error) {
	var d store.DeadLetter
	err := conn.QueryRow(ctx, `SELECT `+columns+`, coalesce(payload, '') FROM dead_letters WHERE id = $1`, id).
		Scan(&d.ID, &d.ReceivedAt, &d.EventID, &d.EventSource, &d.EventType, &d.Reason, &d.PayloadSize, &d.PayloadSHA256, &d.Payload)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return d, fmt.Errorf("dead letter %d: %w", id, ErrNotFound)
	case err != nil:
		return d, fmt.Errorf("reading dead letter %d: %w", id, err)
	}
	return d, nil
}

// Delete removes one dead letter, or returns an error wrapping
// [ErrNotFound].
func Delete(ctx context.Context, conn *pgx.Conn, id int64) error {
	tag, err := conn.Exec(ctx, `DELETE FROM dead_letters WHERE id = $1`, id)
	if err != nil {
		return fmt.Errorf("deleting dead letter %d: %w", id, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("dead letter %d: %w", id, ErrNotFound)
	}
	return nil
}
