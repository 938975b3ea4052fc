package function

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// TestDatabaseFaultIsRedelivered: a trigger that fails every row with an
// internal error (XX000) is the database's fault, not the event's: the
// delivery is answered 5xx so that Pub/Sub redelivers it once the database
// is well, and nothing is kept as a dead letter (which would acknowledge it
// for good). The HTTP API answers 5xx too.
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

// TestDatabaseWideRefusalIsUnavailable: a trigger that refuses every insert
// and update with a SQLSTATE a row's data could cause (division by zero,
// 22012) is the database's fault. A lone POST, 20 concurrent POSTs, a PUT and
// a Pub/Sub delivery through the deployed ingest path are all answered as
// transient (503 with Retry-After, a 5xx to Pub/Sub), and nothing is kept in
// dead_letters: blaming a lone row for such a code would answer 422
// ("retrying it unchanged will not help") and acknowledge a dead letter for
// a message that a retry would store.
func TestDatabaseWideRefusalIsUnavailable(t *testing.T) {
	f := newFixture(t, map[string]string{RoutesVar: RoutesAll})
	base := ingestServer(t, f)
	if r := postContent(t, f.srv.URL, "before the fault"); r.status != 200 {
		t.Fatalf("first POST: %d %s", r.status, r.body)
	}
	execSQL(t, f.url, `
		CREATE FUNCTION broken() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN PERFORM 1 / 0; RETURN NEW; END $$;
		CREATE TRIGGER broken BEFORE INSERT OR UPDATE ON messages FOR EACH ROW EXECUTE FUNCTION broken();`)
	want503 := func(what string, r response) {
		t.Helper()
		if r.status != 503 || r.header.Get("Retry-After") == "" {
			t.Errorf("%s during a database-wide fault: %d %s (Retry-After %q), want 503 with Retry-After", what, r.status, r.body, r.header.Get("Retry-After"))
		}
	}
	want503("a lone POST", postContent(t, f.srv.URL, "lone"))
	// Past the time a failed probe is trusted: the next lone POST probes again.
	time.Sleep(1100 * time.Millisecond)
	want503("a lone POST after a pause", do(t, "POST", f.srv.URL+"/messages", `{"content":"lone keyed"}`,
		map[string]string{"Content-Type": "application/json", "Idempotency-Key": "lone-keyed"}))
	var wg sync.WaitGroup
	statuses := make([]response, 20)
	for i := range statuses {
		wg.Go(func() { statuses[i] = postContent(t, f.srv.URL, fmt.Sprintf("concurrent %d", i)) })
	}
	wg.Wait()
	for i, r := range statuses {
		want503(fmt.Sprintf("concurrent POST %d of 20", i), r)
	}
	want503("a PUT", do(t, "PUT", f.srv.URL+"/messages/1", `{"content":"edited"}`, jsonCT))
	time.Sleep(1100 * time.Millisecond)
	if r := do(t, "POST", base+"/", eventBody("wide-1", []byte("hit by the fault"), ""), ceHeaders("wide-1", testSource)); r.status/100 != 5 {
		t.Errorf("Pub/Sub delivery during a database-wide fault: %d %s, want 5xx (redelivered)", r.status, r.body)
	}
	if n := countRows(t, f.url, "SELECT count(*) FROM dead_letters"); n != 0 {
		t.Errorf("%d dead letters: a database fault was acknowledged as the event's", n)
	}
	if n := countRows(t, f.url, "SELECT count(*) FROM messages"); n != 1 {
		t.Errorf("%d messages, want 1", n)
	}
	// Once the database is mended, the same delivery is stored.
	execSQL(t, f.url, "DROP TRIGGER broken ON messages")
	if r := do(t, "POST", base+"/", eventBody("wide-1", []byte("hit by the fault"), ""), ceHeaders("wide-1", testSource)); r.status != 204 {
		t.Errorf("redelivery after the fault: %d %s", r.status, r.body)
	}
}

// TestContentARuleRefusesIsStillTheMessages: a CHECK that refuses one content
// while others pass is the message's fault, whatever the timing: a lone POST
// (also right after the database was at fault), a PUT and a Pub/Sub delivery
// of it are refused for good (422, a dead letter).
func TestContentARuleRefusesIsStillTheMessages(t *testing.T) {
	f := newFixture(t, map[string]string{RoutesVar: RoutesAll})
	base := ingestServer(t, f)
	if r := postContent(t, f.srv.URL, "fine"); r.status != 200 {
		t.Fatalf("first POST: %d %s", r.status, r.body)
	}
	execSQL(t, f.url, "ALTER TABLE messages ADD CONSTRAINT no_poison CHECK (content <> 'poison')")
	if r := postContent(t, f.srv.URL, "poison"); r.status != 422 {
		t.Errorf("lone POST of refused content: %d %s, want 422", r.status, r.body)
	}
	if r := do(t, "PUT", f.srv.URL+"/messages/1", `{"content":"poison"}`, jsonCT); r.status != 422 {
		t.Errorf("PUT of refused content: %d %s, want 422", r.status, r.body)
	}
	if r := do(t, "POST", base+"/", eventBody("poison-1", []byte("poison"), ""), ceHeaders("poison-1", testSource)); r.status != 204 {
		t.Errorf("delivery of refused content: %d %s, want 204 (kept as a dead letter)", r.status, r.body)
	}
	if n := countRows(t, f.url, "SELECT count(*) FROM dead_letters"); n != 1 {
		t.Errorf("%d dead letters, want 1", n)
	}
}

// TestUnwritableDeadLetterIsNotAcked: when a poison message cannot
// be kept in dead_letters, the delivery is answered 5xx so that it is
// redelivered; once the table takes it again, it is kept exactly once.
func TestUnwritableDeadLetterIsNotAcked(t *testing.T) {
	f := newFixture(t, nil)
	testMigrated(t, f)
	events := eventServer(t, f)
	for _, code := range []string{"P0001", "40001", "53100"} {
		t.Run(code, func(t *testing.T) {
			attempts, remove := failInserts(t, f.url, "dead_letters", code)
			id := "poison-" + code
			body := pushBody(id, []byte{0xff, 0xfe}, nil, "projects/p/subscriptions/s") // not UTF-8: never storable
			h := binaryHeaders(id, "projects/p/topics/t")
			r := do(t, "POST", events+"/", body, h)
			if attempts() == 0 {
				t.Fatalf("the dead letter was never attempted (answer %d %s): the delivery was not taken for poison", r.status, r.body)
			}
			if r.status/100 != 5 {
				t.Fatalf("a poison message whose dead letter failed (%s) was answered %d %s; want 5xx so it is redelivered", code, r.status, r.body)
			}
			if n := countRows(t, f.url, "SELECT count(*) FROM dead_letters WHERE event_id = $1", id); n != 0 {
				t.Fatalf("%d dead letters after a failed insert", n)
			}
			remove()
			for range 2 {
				if r := do(t, "POST", events+"/", body, h); r.status/100 != 2 {
					t.Fatalf("redelivery once dead_letters works: %d %s", r.status, r.body)
				}
			}
			if n := countRows(t, f.url, "SELECT count(*) FROM dead_letters WHERE event_id = $1", id); n != 1 {
				t.Fatalf("%d dead letters after two redeliveries, want 1", n)
			}
		})
	}
	if n := countRows(t, f.url, "SELECT count(*) FROM messages"); n != 0 {
		t.Fatalf("poison stored %d messages", n)
	}
}

// TestTransientFailureIsNeverDeadLettered: a valid message whose
// write fails for a transient reason (deadlock, serialization failure, too
// many connections, a canceled statement, a lock held past the query
// deadline) is answered 5xx and redelivered, never kept as a dead letter.
func TestTransientFailureIsNeverDeadLettered(t *testing.T) {
	type fault struct {
		name  string
		apply func(t *testing.T, url string) (check func(t *testing.T), remove func())
	}
	trigger := func(code string) func(t *testing.T, url string) (func(*testing.T), func()) {
		return func(t *testing.T, url string) (func(*testing.T), func()) {
			attempts, remove := failInserts(t, url, "messages", code)
			return func(t *testing.T) {
				if attempts() == 0 {
					t.Fatal("the failing insert never ran")
				}
			}, remove
		}
	}
	faults := []fault{
		{"deadlock 40P01", trigger("40P01")},
		{"serialization 40001", trigger("40001")},
		{"too many connections 53300", trigger("53300")},
		{"statement canceled 57014", trigger("57014")},
		{"lock past the query deadline", func(t *testing.T, url string) (func(*testing.T), func()) {
			release := holdLock(t, url, "messages")
			return func(*testing.T) {}, release
		}},
	}
	for i, fl := range faults {
		t.Run(fl.name, func(t *testing.T) {
			f := newFixture(t, map[string]string{"DB_QUERY_TIMEOUT": "1s"})
			testMigrated(t, f)
			events := eventServer(t, f)
			check, remove := fl.apply(t, f.url)
			id := fmt.Sprintf("transient-%d", i)
			content := "valid message " + fl.name
			body := pushBody(id, []byte(content), nil, "projects/p/subscriptions/s")
			h := binaryHeaders(id, "projects/p/topics/t")
			r := do(t, "POST", events+"/", body, h)
			check(t)
			if r.status/100 != 5 {
				t.Fatalf("a valid message whose write failed transiently was answered %d %s; want 5xx", r.status, r.body)
			}
			if n := countRows(t, f.url, "SELECT count(*) FROM dead_letters"); n != 0 {
				t.Fatalf("a transient failure left %d dead letters", n)
			}
			remove()
			if r := do(t, "POST", events+"/", body, h); r.status/100 != 2 {
				t.Fatalf("redelivery after the fault: %d %s", r.status, r.body)
			}
			if n := countRows(t, f.url, "SELECT count(*) FROM messages WHERE content = $1", content); n != 1 {
				t.Fatalf("%d rows after the redelivery, want 1", n)
			}
			if n := countRows(t, f.url, "SELECT count(*) FROM dead_letters"); n != 0 {
				t.Fatalf("%d dead letters", n)
			}
		})
	}
}
