package store_test

import (
	"errors"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
)

// TestPre004DeadLetterInsertFailsAfter004 pins the upgrade window the README
// describes (Deploying, after "Run go run ./cmd/pscmessages migrate"): a build older
// than 004_dead_letters_bounded.sql keeps dead letters with
// ON CONFLICT (event_source, event_id), which no constraint matches once 004
// has run, so until the new revision serves, its poison events are 500s and
// redelivered. If this test starts failing, that README paragraph is stale.
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
