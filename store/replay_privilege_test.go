package store_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"example.com/pscmessages/store"
	"example.com/pscmessages/store/grants"
	"example.com/pscmessages/store/localpg"
	"example.com/pscmessages/store/localpg/localpgtest"
)

// TestReplayOnlyStoreLeastPrivilege: a role given exactly
// ReplayPrivileges can open a ReplayOnly store and add messages, keyed
// (a replay's deduplication) or not, and nothing more; a normal store, which
// may update, delete and clean up, is refused to it at Open, naming what it
// lacks.
func TestReplayOnlyStoreLeastPrivilege(t *testing.T) {
	c := localpgtest.Shared(t, localpg.Options{Password: "admin-pw"})
	ctx := t.Context()
	if err := c.CreateDatabase(ctx, "app"); err != nil {
		t.Fatal(err)
	}
	admin, err := store.Open(ctx, store.Config{ConnString: c.SuperuserURL("app"), Migrate: true})
	if err != nil {
		t.Fatal(err)
	}
	admin.Close()
	if err := c.Exec(ctx, `CREATE ROLE op LOGIN PASSWORD 'op-pw'`); err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.Connect(ctx, c.SuperuserURL("app"))
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range grants.SQL("op", grants.Replay()) {
		if _, err := conn.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	conn.Close(ctx)
	url := c.URL("op", "op-pw", "app", "sslmode=disable")

	_, err = store.Open(ctx, store.Config{ConnString: url})
	if !errors.Is(err, store.ErrSchema) || !strings.Contains(err.Error(), "DELETE on table idempotency_keys") {
		t.Fatalf("a full store as the operator: %v, want ErrSchema naming DELETE on table idempotency_keys", err)
	}

	st, err := store.Open(ctx, store.Config{ConnString: url, ReplayOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	first, err := st.Add(ctx, "replayed", "pubsub:k1")
	if err != nil {
		t.Fatal(err)
	}
	again, err := st.Add(ctx, "replayed", "pubsub:k1")
	if err != nil || !again.AlreadyStored || again.ID != first.ID {
		t.Fatalf("second replay: %+v, %v; want the first's id %d, AlreadyStored", again, err, first.ID)
	}
	if _, err := st.Add(ctx, "keyless", ""); err != nil {
		t.Fatal(err)
	}
	if err := st.Delete(testContext(t), first.ID); err == nil {
		t.Fatal("a ReplayOnly store's operator deleted a message")
	}
}
