package localrun

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	function "example.com/pscmessages"
	"example.com/pscmessages/store"
)

// TestDeadLettersKeptWholeReplay: dead letters over 64 KiB are kept whole by
// IngestPubSub, so they can be replayed once their cause is fixed: a 50 KB
// message a real CHECK constraint refused is stored after the constraint is
// dropped, and a message over MAX_CONTENT_BYTES is stored by a replay with
// MAX_CONTENT_BYTES raised (and refused, kept, by one without).
func TestDeadLettersKeptWholeReplay(t *testing.T) {
	ctx := t.Context()
	c, db := sharedDatabase(t, "whole")
	url := c.SuperuserURL(db)
	st, err := store.Open(ctx, store.Config{ConnString: url, Migrate: true})
	if err != nil {
		t.Fatal(err)
	}
	st.Close()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, `ALTER TABLE messages ADD CONSTRAINT content_under_40k CHECK (octet_length(content) < 40000)`); err != nil {
		t.Fatal(err)
	}

	base, stop := startMainServe(t, map[string]string{"DATABASE_URL": url})
	const source = "//pubsub.googleapis.com/projects/p/topics/t"
	deliver := func(id, data string) {
		t.Helper()
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+"/IngestPubSub", strings.NewReader(string(envelope(id, data))))
		if err != nil {
			t.Fatal(err)
		}
		for k, v := range map[string]string{"Content-Type": "application/json", "ce-id": id, "ce-source": source,
			"ce-specversion": "1.0", "ce-type": function.MessagePublishedType} {
			req.Header.Set(k, v)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusNoContent {
			t.Fatalf("delivery %s: %d, want 204", id, resp.StatusCode)
		}
	}
	refused := strings.Repeat("r", 50_000)  // the CHECK refuses it
	tooLong := strings.Repeat("L", 100_000) // over the default MAX_CONTENT_BYTES (65536)
	deliver("ok-1", "a small message the CHECK accepts")
	deliver("check-1", refused)
	deliver("long-1", tooLong)
	stop()

	if n := pgxCount(t, url, "SELECT count(*) FROM messages"); n != 1 {
		t.Fatalf("%d messages, want only the small one", n)
	}
	var checkID, longID string
	var whole bool
	err = conn.QueryRow(ctx, `SELECT
			(SELECT id::text FROM dead_letters WHERE event_id = 'check-1'),
			(SELECT id::text FROM dead_letters WHERE event_id = 'long-1'),
			(SELECT bool_and(octet_length(payload) = payload_size AND sha256(payload) = payload_sha256) FROM dead_letters)`).
		Scan(&checkID, &longID, &whole)
	if err != nil {
		t.Fatalf("the two dead letters: %v", err)
	}
	if !whole {
		t.Error("a dead letter kept only part of its delivery")
	}

	if _, err := conn.Exec(ctx, `ALTER TABLE messages DROP CONSTRAINT content_under_40k`); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"DATABASE_URL": url}
	stdout, stderr, code := runMain(t, env, "deadletters", "replay", checkID)
	if code != 0 || !strings.Contains(stdout, "dead letter "+checkID+": stored as message") {
		t.Errorf("replay of the CHECK-refused message after dropping the constraint: exit %d\n%s%s", code, stdout, stderr)
	}
	stdout, stderr, code = runMain(t, env, "deadletters", "replay", longID)
	if code != 1 || !strings.Contains(stdout, "still cannot be stored: content exceeds 65536 bytes") {
		t.Errorf("replay of the long message with the default MAX_CONTENT_BYTES: exit %d\n%s%s", code, stdout, stderr)
	}
	env["MAX_CONTENT_BYTES"] = "200000"
	stdout, stderr, code = runMain(t, env, "deadletters", "replay", longID)
	if code != 0 || !strings.Contains(stdout, "dead letter "+longID+": stored as message") {
		t.Errorf("replay of the long message with MAX_CONTENT_BYTES raised: exit %d\n%s%s", code, stdout, stderr)
	}
	for _, want := range []string{refused, tooLong} {
		if n := pgxCount(t, url, fmt.Sprintf("SELECT count(*) FROM messages WHERE content = '%s'", want)); n != 1 {
			t.Errorf("a %d-byte message stored %d times, want once, exactly as sent", len(want), n)
		}
	}
	if n := pgxCount(t, url, "SELECT count(*) FROM dead_letters"); n != 0 {
		t.Errorf("%d dead letters left, want none", n)
	}
}
