package store

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
)

// NotReplayable says why d cannot be sent through IngestPubSub again, or ""
// when it can: a delivery of which only a prefix was kept (dead_letters may
// hold such rows from before payloads were kept whole) is gone, and an id or
// source kept in display form (escaped or cut) would not deduplicate as the
// original did.
func (d DeadLetter) NotReplayable() string {
	sum := sha256.Sum256(d.Payload)
	switch {
	case d.PayloadSize > int64(len(d.Payload)) || (len(d.PayloadSHA256) > 0 && !bytes.Equal(sum[:], d.PayloadSHA256)):
		return fmt.Sprintf("only the first %d of its %d bytes were kept, so it cannot be sent again; "+
			"publish the message again, smaller, if it still matters, and delete this dead letter", len(d.Payload), d.PayloadSize)
	case displayText(d.EventID, maxDeadLetterText) != d.EventID || displayText(d.EventSource, maxDeadLetterText) != d.EventSource ||
		strings.Contains(d.EventID, `\x`) || strings.Contains(d.EventSource, `\x`) ||
		strings.HasSuffix(d.EventID, "…") || strings.HasSuffix(d.EventSource, "…"):
		return "its event id or source was escaped or cut when it was kept, so a replay would not be deduplicated like the original"
	}
	return ""
}

// deadLetterColumns is what `go run ./cmd/pscmessages deadletters` reads; an operator's
// role needs SELECT on them and DELETE on the table (see
// [DeadLetterOperatorSQL]).
const deadLetterColumns = `id, received_at, coalesce(event_id, ''), coalesce(event_source, ''), coalesce(event_type, ''), reason,
	coalesce(payload_size, octet_length(coalesce(payload, ''))), coalesce(payload_sha256, sha256(coalesce(payload, '')))`

// ListDeadLetters returns up to limit dead letters, newest first, without
// their payloads.
func ListDeadLetters(ctx context.Context, conn *pgx.Conn, limit int) ([]DeadLetter, error) {
	rows, err := conn.Query(ctx, `SELECT `+deadLetterColumns+` FROM dead_letters ORDER BY id DESC LIMIT $1`, limit)
	if err != nil {
		return nil, classify(err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (DeadLetter, error) {
		var d DeadLetter
		err := row.Scan(&d.ID, &d.ReceivedAt, &d.EventID, &d.EventSource, &d.EventType, &d.Reason, &d.PayloadSize, &d.PayloadSHA256)
		return d, err
	})
	return out, classify(err)
}

// ErrNoDeadLetter means no dead letter has the id asked for.
var ErrNoDeadLetter = errors.New("no such dead letter")

// GetDeadLetter returns one dead letter with its payload.
func GetDeadLetter(ctx context.Context, conn *pgx.Conn, id int64) (DeadLetter, error) {
	var d DeadLetter
	err := conn.QueryRow(ctx, `SELECT `+deadLetterColumns+`, coalesce(payload, '') FROM dead_letters WHERE id = $1`, id).
		Scan(&d.ID, &d.ReceivedAt, &d.EventID, &d.EventSource, &d.EventType, &d.Reason, &d.PayloadSize, &d.PayloadSHA256, &d.Payload)
	if errors.Is(err, pgx.ErrNoRows) {
		return d, fmt.Errorf("dead letter %d: %w", id, ErrNoDeadLetter)
	}
	return d, classify(err)
}

// DeleteDeadLetter removes one dead letter.
func DeleteDeadLetter(ctx context.Context, conn *pgx.Conn, id int64) error {
	tag, err := conn.Exec(ctx, `DELETE FROM dead_letters WHERE id = $1`, id)
	if err != nil {
		return classify(err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("dead letter %d: %w", id, ErrNoDeadLetter)
	}
	return nil
}

// ReplayPrivileges is what a [Config.ReplayOnly] store uses: Add's group
// commit reads and inserts idempotency records and inserts messages (its
// lookup of known keys reads messages too), draws ids from messages_id_seq,
// and Open reads the schema version. No UPDATE or DELETE on messages or
// idempotency_keys: a ReplayOnly store never cleans up expired keys.
func ReplayPrivileges() []Privilege {
	return []Privilege{
		{Kind: "SCHEMA", Object: "public", Action: "USAGE"},
		{Kind: "TABLE", Object: "messages", Action: "SELECT"},
		{Kind: "TABLE", Object: "messages", Action: "INSERT"},
		{Kind: "SEQUENCE", Object: "messages_id_seq", Action: "USAGE"},
		{Kind: "TABLE", Object: "idempotency_keys", Action: "SELECT"},
		{Kind: "TABLE", Object: "idempotency_keys", Action: "INSERT"},
		{Kind: "TABLE", Object: VersionTable, Action: "SELECT"},
	}
}

// DeadLetterOperatorPrivileges is exactly what `go run ./cmd/pscmessages deadletters`
// (list, show, replay, delete) uses: [ReplayPrivileges] for replaying
// through a ReplayOnly store, and reading and deleting dead letters. It is
// not a superset of [FunctionPrivileges]: the operator cannot update or
// delete messages.
func DeadLetterOperatorPrivileges() []Privilege {
	return append(ReplayPrivileges(),
		Privilege{Kind: "TABLE", Object: "dead_letters", Action: "SELECT"},
		Privilege{Kind: "TABLE", Object: "dead_letters", Action: "DELETE"})
}

// DeadLetterOperatorSQL returns the statements that give role exactly
// [DeadLetterOperatorPrivileges], one per object.
func DeadLetterOperatorSQL(role string) []string {
	return grantSQL(role, DeadLetterOperatorPrivileges())
}
