package store_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/jackc/pgx/v5"

	"example.com/pscmessages/store"
)

func connect(t testing.TB, url string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(testContext(t), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func randomText(n int) string {
	const letters = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
	b := make([]byte, n)
	for i := range b {
		b[i] = letters[rand.IntN(len(letters))]
	}
	return string(b)
}

// TestDeadLetterHostileEvents: ids and sources that PostgreSQL text or a
// btree cannot hold, and a 10 MB payload, are all kept, each once, the
// payload whole with its size and digest.
func TestDeadLetterHostileEvents(t *testing.T) {
	st, url := openStore(t)
	ctx := testContext(t)
	big := bytes.Repeat([]byte("0123456789"), 1<<20) // 10 MiB
	// Random, so that the btree cannot compress it below its row limit.
	longSource := randomText(8000)
	tests := []struct {
		name     string
		d        store.DeadLetter
		wantID   string // display form kept in event_id; "" to skip the check
		wantSrc  string
		wantSize int64
	}{
		{name: "NUL in the id", d: store.DeadLetter{EventID: "a\x00b", EventSource: "//pubsub/t"}, wantID: `a\x00b`},
		{name: "0xff in the id", d: store.DeadLetter{EventID: "\xffid", EventSource: "//pubsub/t"}, wantID: `\xffid`},
		{name: "3,000 random characters of id", d: store.DeadLetter{EventID: randomText(3000), EventSource: "//pubsub/t"}},
		{name: "8,000 random characters of source", d: store.DeadLetter{EventID: "1", EventSource: longSource},
			wantSrc: longSource[:store.MaxDeadLetterText-len("…")] + "…"},
		{name: "invalid type and reason", d: store.DeadLetter{EventID: "2", EventSource: "x", EventType: "\x00\xfe", Reason: "bad \xff"}},
		{name: "10 MiB payload", d: store.DeadLetter{EventID: "3", EventSource: "x", Payload: big}, wantSize: int64(len(big))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.d.Reason += "poison"
			for range 2 { // a redelivery is kept once
				if err := st.AddDeadLetter(ctx, tt.d); err != nil {
					t.Fatal(err)
				}
			}
			sum := sha256.Sum256(tt.d.Payload)
			key := store.DeadLetterKey(tt.d.EventSource, tt.d.EventID, sum[:])
			var n int
			var id, src string
			var payload, digest []byte
			var size int64
			err := connect(t, url).QueryRow(ctx, `SELECT count(*) OVER (), coalesce(event_id, ''), coalesce(event_source, ''),
				payload, payload_size, payload_sha256 FROM dead_letters WHERE dedupe_key = $1`, key).
				Scan(&n, &id, &src, &payload, &size, &digest)
			if err != nil {
				t.Fatal(err)
			}
			if n != 1 {
				t.Fatalf("%d rows, want 1", n)
			}
			if len(id) > store.MaxDeadLetterText || len(src) > store.MaxDeadLetterText {
				t.Errorf("id of %d bytes, source of %d bytes kept", len(id), len(src))
			}
			if tt.wantID != "" && id != tt.wantID {
				t.Errorf("event_id = %q, want %q", id, tt.wantID)
			}
			if tt.wantSrc != "" && src != tt.wantSrc {
				t.Errorf("event_source = %.40q… (%d bytes), want %d bytes", src, len(src), len(tt.wantSrc))
			}
			if !bytes.Equal(payload, tt.d.Payload) {
				t.Errorf("payload of %d bytes kept, want all %d", len(payload), len(tt.d.Payload))
			}
			if size != int64(len(tt.d.Payload)) || !bytes.Equal(digest, sum[:]) {
				t.Errorf("payload_size %d, sha256 %x; want %d, %x", size, digest, len(tt.d.Payload), sum)
			}
		})
	}
}

// TestDeadLetterReusedIDKeptApart: the same source and id with another
// payload is another event (a restarted emulator reuses ids), kept beside the
// first; a redelivery of either is kept once.
func TestDeadLetterReusedIDKeptApart(t *testing.T) {
	st, url := openStore(t)
	ctx := testContext(t)
	for _, p := range []string{"A", "B", "A", "B"} {
		d := store.DeadLetter{EventID: "7", EventSource: "//pubsub/t", Reason: "poison", Payload: []byte(p)}
		if err := st.AddDeadLetter(ctx, d); err != nil {
			t.Fatal(err)
		}
	}
	var got []string
	rows, _ := connect(t, url).Query(ctx, "SELECT convert_from(payload, 'UTF8') FROM dead_letters WHERE event_id = '7' ORDER BY id")
	got, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(got) != "[A B]" {
		t.Fatalf("dead letters %v, want [A B]", got)
	}
}

// TestDeadLetterMigrationKeepsDedupe: a dead letter kept before migration 004
// is still found by a redelivery after it, and keeps its payload.
func TestDeadLetterMigrationKeepsDedupe(t *testing.T) {
	ctx := testContext(t)
	name := fmt.Sprintf("s%d", dbSeq.Add(1))
	if err := cluster.CreateDatabase(ctx, name); err != nil {
		t.Fatal(err)
	}
	url := cluster.SuperuserURL(name)
	conn := connect(t, url)
	migrateTo(t, conn, 3)
	if _, err := conn.Exec(ctx, `INSERT INTO dead_letters (event_id, event_source, reason, payload) VALUES
		('1', '//pubsub/é', 'old', 'payload'), (NULL, NULL, 'no id', 'x'), (NULL, NULL, 'no id', 'x')`); err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(ctx, store.Config{ConnString: url, Migrate: true})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if err := st.AddDeadLetter(ctx, store.DeadLetter{EventID: "1", EventSource: "//pubsub/é", Reason: "new", Payload: []byte("payload")}); err != nil {
		t.Fatal(err)
	}
	var n, size int
	if err := conn.QueryRow(ctx, "SELECT count(*), max(payload_size) FROM dead_letters WHERE event_id = '1'").Scan(&n, &size); err != nil || n != 1 || size != 7 {
		t.Fatalf("%d rows of size %d (%v), want the one kept before the migration", n, size, err)
	}
}
