package localrun

import (
	"context"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"example.com/pscmessages"
	"example.com/pscmessages/store"
)

// TestDeadLettersOperatorLeastPrivilege: a role given only
// `migrate -deadletters-operator` can list, show, replay and delete dead
// letters, and cannot update or delete messages (nor delete idempotency
// records): a replay-only role is not the functions' role.
func TestDeadLettersOperatorLeastPrivilege(t *testing.T) {
	c := migrateCluster(t)
	ctx := t.Context()
	if err := c.Exec(ctx, `CREATE ROLE op LOGIN PASSWORD 'op-pw'`); err != nil {
		t.Fatal(err)
	}
	if _, err := migrateRun(t, migrateAdminEnv(c), "-deadletters-operator", "op"); err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(ctx, store.Config{ConnString: c.SuperuserURL("app"), Migrate: true})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	for _, id := range []string{"m1", "m2", "m3"} {
		if err := st.AddDeadLetter(ctx, store.DeadLetter{EventID: id, EventSource: "//pubsub.googleapis.com/projects/p/topics/t",
			EventType: function.MessagePublishedType, Reason: "kept by a test", Payload: envelope(id, "hi from "+id)}); err != nil {
			t.Fatal(err)
		}
	}
	// A message stored by the functions, which the operator must not touch.
	if _, err := st.Add(ctx, "stored by the function", ""); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"DATABASE_URL": c.URL("op", "op-pw", "app")}
	steps := []struct {
		args []string
		want string
	}{
		{[]string{"deadletters", "list"}, "kept by a test"},
		{[]string{"deadletters", "show", "2"}, "event id:  m2"},
		{[]string{"deadletters", "replay", "1", "2"}, "dead letter 2: stored as message"},
		{[]string{"deadletters", "delete", "3"}, "dead letter 3: deleted"},
		{[]string{"deadletters", "list"}, "no dead letters"},
	}
	for _, s := range steps {
		stdout, stderr, code := runMain(t, env, s.args...)
		if code != 0 || !strings.Contains(stdout, s.want) {
			t.Fatalf("%s as the operator: exit %d, want 0 and %q\nstdout:\n%s\nstderr:\n%s", strings.Join(s.args, " "), code, s.want, stdout, stderr)
		}
	}

	conn, err := pgx.Connect(ctx, c.URL("op", "op-pw", "app"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	for _, sql := range []string{
		`DELETE FROM messages`,
		`UPDATE messages SET content = 'changed by the operator'`,
		`DELETE FROM idempotency_keys`,
		`UPDATE idempotency_keys SET recorded_at = now()`,
		`TRUNCATE messages`,
	} {
		_, err := conn.Exec(ctx, sql)
		if err == nil || !strings.Contains(err.Error(), "permission denied") {
			t.Errorf("%s as the operator: %v, want permission denied", sql, err)
		}
	}
	var n int
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM messages`).Scan(&n); err != nil || n != 3 {
		t.Fatalf("messages after the operator's work: %d, %v; want 3 (one stored, two replayed)", n, err)
	}
}

// TestMigrateWarnsOperatorWithMessageWrites: an operator that an older
// migrate gave the functions' grants still may update and delete messages
// (grants only add); migrate says so and prints the REVOKE.
func TestMigrateWarnsOperatorWithMessageWrites(t *testing.T) {
	c := migrateCluster(t)
	if _, err := migrateRun(t, migrateAdminEnv(c), "-create-role", "-grant", "op"); err != nil {
		t.Fatal(err)
	}
	out, err := migrateRun(t, migrateAdminEnv(c), "-deadletters-operator", "op")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, `warning: dead-letter operator "op" may update or delete messages`) ||
		!strings.Contains(out, `REVOKE UPDATE, DELETE ON TABLE messages, idempotency_keys FROM "op"`) {
		t.Fatalf("migrate output has no warning about op's writes:\n%s", out)
	}
	// -create-role creates an operator too.
	if _, err := migrateRun(t, migrateAdminEnv(c), "-create-role", "-deadletters-operator", "newop"); err != nil {
		t.Fatal(err)
	}
}
