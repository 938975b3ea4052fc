package deadletter_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"example.com/pscmessages/store"
	"example.com/pscmessages/store/deadletter"
	"example.com/pscmessages/store/grants"
)

// operatorConn migrates a fresh database, keeps dead letters there as the
// functions do, and connects as a role granted exactly OperatorPrivileges.
func operatorConn(t *testing.T, db string, kept ...store.DeadLetter) *pgx.Conn {
	t.Helper()
	ctx := testContext(t)
	if err := cluster.CreateDatabase(ctx, db); err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(ctx, store.Config{ConnString: cluster.SuperuserURL(db), Migrate: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range kept {
		if err := st.AddDeadLetter(ctx, d); err != nil {
			t.Fatal(err)
		}
	}
	st.Close()
	role := db + "_op"
	if err := cluster.Exec(ctx, "CREATE ROLE "+pgx.Identifier{role}.Sanitize()+" LOGIN"); err != nil {
		t.Fatal(err)
	}
	admin, err := pgx.Connect(ctx, cluster.SuperuserURL(db))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	for _, sql := range grants.SQL(role, deadletter.OperatorPrivileges()) {
		if _, err := admin.Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	conn, err := pgx.Connect(ctx, cluster.URL(role, "", db))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// TestOperatorListsReadsAndDeletesKeptEvents: with only the operator's
// grant, a listing is newest first, bounded and without payloads; one dead
// letter reads back whole, as it was kept; a deleted one is gone.
func TestOperatorListsReadsAndDeletesKeptEvents(t *testing.T) {
	ctx := testContext(t)
	payload := []byte(`{"message":{"data":"AA=="}}`)
	conn := operatorConn(t, "listing",
		store.DeadLetter{EventID: "e1", EventSource: "src", EventType: "t", Reason: "first", Payload: []byte("one")},
		store.DeadLetter{EventID: "e2", EventSource: "src", EventType: "t", Reason: "second", Payload: payload},
		store.DeadLetter{EventID: "e3", EventSource: "src", EventType: "t", Reason: "third", Payload: []byte("three")})

	list, err := deadletter.List(ctx, conn, 2)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 2 || list[0].Reason != "third" || list[1].Reason != "second" {
		t.Fatalf("List(2) = %+v, want the newest two, newest first", list)
	}
	second := list[1]
	sum := sha256.Sum256(payload)
	if second.Payload != nil || second.PayloadSize != int64(len(payload)) || !bytes.Equal(second.PayloadSHA256, sum[:]) {
		t.Fatalf("a listed dead letter: payload %q, size %d, digest %x; want no payload, size %d, digest %x",
			second.Payload, second.PayloadSize, second.PayloadSHA256, len(payload), sum)
	}

	d, err := deadletter.Get(ctx, conn, second.ID)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(d.Payload, payload) || d.EventID != "e2" || d.EventSource != "src" || d.EventType != "t" || d.NotReplayable() != "" {
		t.Fatalf("Get = %+v, want e2 whole and replayable", d)
	}

	if err := deadletter.Delete(ctx, conn, second.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := deadletter.Get(ctx, conn, second.ID); !errors.Is(err, deadletter.ErrNotFound) {
		t.Fatalf("Get after Delete: %v, want ErrNotFound", err)
	}
	if err := deadletter.Delete(ctx, conn, second.ID); !errors.Is(err, deadletter.ErrNotFound) {
		t.Fatalf("Delete twice: %v, want ErrNotFound", err)
	}
	if list, err := deadletter.List(ctx, conn, 10); err != nil || len(list) != 2 {
		t.Fatalf("List after Delete = %d dead letters, %v; want 2", len(list), err)
	}
}

// TestOperatorCannotChangeMessages: the operator's grant replays through a
// ReplayOnly store, which only adds, and gives no UPDATE or DELETE on
// messages.
func TestOperatorCannotChangeMessages(t *testing.T) {
	ctx := testContext(t)
	conn := operatorConn(t, "least")
	cfg := conn.Config()
	st, err := store.Open(ctx, store.Config{ConnString: cluster.URL(cfg.User, "", cfg.Database), ReplayOnly: true})
	if err != nil {
		t.Fatalf("a ReplayOnly store as the operator: %v", err)
	}
	defer st.Close()
	added, err := st.Add(ctx, "replayed", "pubsub:k")
	if err != nil {
		t.Fatal(err)
	}
	for _, sql := range []string{"UPDATE messages SET content = 'x'", "DELETE FROM messages"} {
		_, err := conn.Exec(ctx, sql+" WHERE id = $1", added.Message.ID)
		if err == nil || !strings.Contains(err.Error(), "permission denied") {
			t.Errorf("%s as the operator: %v, want permission denied", sql, err)
		}
	}
}
