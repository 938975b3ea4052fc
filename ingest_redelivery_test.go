package function

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"
)

// TestDatabaseFaultIsRedelivered: a trigger that fails every row with an
// internal error (XX000) is the database's fault, not the event's. Before the
// fix the event was answered 204 and kept as a dead letter (acknowledged,
// never redelivered); now it is a 5xx, Pub/Sub redelivers it, and nothing is
// kept. The HTTP API answers 5xx too.
func TestDatabaseFaultIsRedelivered(t *testing.T) {
	f := newFixture(t, nil)
	base := ingestServer(t, f)
	ctx := context.Background()
	// One event stored first, so the schema exists before the trigger.
	if r := do(t, "POST", base+"/", eventBody("fault-0", []byte("fine"), ""), ceHeaders("fault-0", testSource)); r.status/100 != 2 {
		t.Fatalf("first event: %d %s", r.status, r.body)
	}
	conn, err := pgx.Connect(ctx, f.url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, `
		CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN RAISE EXCEPTION 'injected internal error' USING ERRCODE = 'XX000'; END $$;
		CREATE TRIGGER refuse BEFORE INSERT ON messages FOR EACH ROW EXECUTE FUNCTION refuse();`); err != nil {
		t.Fatal(err)
	}
	r := do(t, "POST", base+"/", eventBody("fault-1", []byte("hit by the fault"), ""), ceHeaders("fault-1", testSource))
	if r.status/100 != 5 {
		t.Errorf("event during a database fault: %d %s, want 5xx (redelivered)", r.status, r.body)
	}
	if r := do(t, "POST", f.srv.URL+"/messages", `{"content":"x"}`, map[string]string{"Content-Type": "application/json"}); r.status/100 != 5 {
		t.Errorf("POST during a database fault: %d %s, want 5xx", r.status, r.body)
	}
	if n := countRows(t, f.url, "SELECT count(*) FROM dead_letters"); n != 0 {
		t.Errorf("%d dead letters: a database fault was acknowledged as the event's", n)
	}
	if n := countRows(t, f.url, "SELECT count(*) FROM messages"); n != 1 {
		t.Errorf("%d messages, want 1", n)
	}
}
