package store_test

import (
	"errors"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
)

// TestPre004DeadLetterInsertFailsAfter004 pins the upgrade window
// store/MIGRATIONS.md describes (Upgrade windows): a build older
// than 004_dead_letters_bounded.sql keeps dead letters with
// ON CONFLICT (event_source, event_id), which no constraint matches once 004
// has run, so until the new revision serves, its poison events are 500s and
// redelivered. If this test starts failing, that paragraph is stale.
func TestPre004DeadLetterInsertFailsAfter004(t *testing.T) {
	_, url := openStore(t)
	// The statement of builds before 004 (store/messages.go at b5a083a^).
	_, err := connect(t, url).Exec(testContext(t), `INSERT INTO dead_letters (event_id, event_source, event_type, reason, payload)
			VALUES (NULLIF($1, ''), NULLIF($2, ''), NULLIF($3, ''), $4, $5)
			ON CONFLICT (event_source, event_id) DO NOTHING`,
		"1", "//pubsub.googleapis.com/projects/p/topics/t", "google.cloud.pubsub.topic.v1.messagePublished", "empty", []byte("{}"))
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "42P10" {
		t.Fatalf("old build's dead-letter insert on the current schema: %v, want 42P10", err)
	}
}

// TestPre007KeyedInsertFailsAfter007 pins the upgrade window of
// 007_retire_message_keys.sql that store/MIGRATIONS.md describes: a build
// older than it writes messages.idempotency_key with every keyed message,
// which 007 drops, so on the new schema its keyed writes fail (42703) and are
// retried, while its keyless ones still work. If this test starts failing,
// that paragraph is stale.
func TestPre007KeyedInsertFailsAfter007(t *testing.T) {
	_, url := openStore(t)
	conn := connect(t, url)
	ctx := testContext(t)
	// The statements of builds before 007 (store/insert.go before it), reduced
	// to what names the column.
	_, err := conn.Exec(ctx, "INSERT INTO messages (id, content, idempotency_key, created_at, updated_at) VALUES (nextval('messages_id_seq'), 'x', 'http:k', now(), now())")
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "42703" {
		t.Fatalf("old build's keyed insert on the current schema: %v, want 42703", err)
	}
	if _, err := conn.Exec(ctx, "INSERT INTO messages (id, content, created_at, updated_at) VALUES (nextval('messages_id_seq'), 'x', now(), now())"); err != nil {
		t.Fatalf("old build's keyless insert on the current schema: %v", err)
	}
}
