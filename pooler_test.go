//go:build e2e || pgbouncer

package function

import (
	"context"
	"fmt"
	"net/url"
	"strings"
	"sync"
	"testing"

	"example.com/pscmessages/store/localpg"
	"example.com/pscmessages/store/localpg/localpgtest"
)

// pooledFixture is a service whose DATABASE_URL goes through a real
// PgBouncer in transaction mode with a server pool of 2, with
// DB_POOLER=transaction. f.url stays the direct superuser URL, for the
// tests' own checks (a plain pgx connection caches named statements, which
// is exactly what a transaction pooler cannot carry).
func pooledFixture(t *testing.T, env map[string]string) (*fixture, *localpg.Bouncer) {
	t.Helper()
	direct := testDB(t)
	u, err := url.Parse(direct)
	if err != nil {
		t.Fatal(err)
	}
	b := localpgtest.StartBouncer(t, localpg.BouncerOptions{Upstream: cluster, Password: "admin-secret"})
	if env == nil {
		env = map[string]string{}
	}
	env["DATABASE_URL"] = b.URL("postgres", "", strings.TrimPrefix(u.Path, "/"))
	env["DB_POOLER"] = "transaction"
	env[RoutesVar] = "all"
	f := newFixture(t, env)
	f.url = direct
	return f, b
}

// TestEverythingThroughPgBouncer runs the HTTP contract, the /messages
// resource, idempotency, Pub/Sub ingestion and dead letters through a
// transaction-mode PgBouncer, with more concurrent requests than the
// pooler has server connections.
func TestEverythingThroughPgBouncer(t *testing.T) {
	f, _ := pooledFixture(t, nil)
	base := f.srv.URL

	t.Run("legacy contract, concurrent", func(t *testing.T) {
		var wg sync.WaitGroup
		for w := range 16 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range 10 {
					b := fmt.Sprintf(`{"content":"legacy %d-%d"}`, w, i)
					if r := do(t, "POST", base+"/", b, jsonCT); r.status != 200 {
						t.Errorf("POST /: %d %s", r.status, r.body)
					}
					// The observed failure: concurrent GETs answered 500
					// with 42P05 through the pooler.
					if r := do(t, "GET", base+"/", "", nil); r.status != 200 {
						t.Errorf("GET /: %d %s", r.status, r.body)
					}
				}
			}()
		}
		wg.Wait()
		if n := countRows(t, f.url, "SELECT count(*) FROM messages WHERE content LIKE 'legacy %'"); n != 160 {
			t.Fatalf("%d rows, want 160", n)
		}
	})

	t.Run("/messages", func(t *testing.T) {
		r := do(t, "POST", base+"/messages", `{"content":"res"}`, jsonCT)
		if r.status != 201 {
			t.Fatalf("POST /messages: %d %s", r.status, r.body)
		}
		loc := r.header.Get("Location")
		if r := do(t, "GET", base+loc, "", nil); r.status != 200 || r.json(t)["content"] != "res" {
			t.Fatalf("GET %s: %d %s", loc, r.status, r.body)
		}
		if r := do(t, "PUT", base+loc, `{"content":"edited"}`, jsonCT); r.status != 200 || r.json(t)["content"] != "edited" {
			t.Fatalf("PUT %s: %d %s", loc, r.status, r.body)
		}
		if r := do(t, "GET", base+"/messages?limit=2", "", nil); r.status != 200 || r.json(t)["next"] == nil {
			t.Fatalf("GET /messages?limit=2: %d %s", r.status, r.body)
		}
		if r := do(t, "DELETE", base+loc, "", nil); r.status != 204 {
			t.Fatalf("DELETE %s: %d %s", loc, r.status, r.body)
		}
		if r := do(t, "GET", base+loc, "", nil); r.status != 404 {
			t.Fatalf("GET %s after DELETE: %d %s", loc, r.status, r.body)
		}
	})

	t.Run("idempotency", func(t *testing.T) {
		h := map[string]string{"Content-Type": "application/json", "Idempotency-Key": "pooled-7"}
		first := do(t, "POST", base+"/", `{"content":"once"}`, h)
		var wg sync.WaitGroup
		for range 12 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				r := do(t, "POST", base+"/", `{"content":"once"}`, h)
				if r.status != 200 || r.header.Get("Idempotent-Replayed") != "true" || r.json(t)["id"] != first.json(t)["id"] {
					t.Errorf("retry: %d %v %s", r.status, r.header, r.body)
				}
			}()
		}
		wg.Wait()
		if r := do(t, "POST", base+"/", `{"content":"other"}`, h); r.status != 422 {
			t.Fatalf("reused key: %d %s", r.status, r.body)
		}
		if n := countRows(t, f.url, "SELECT count(*) FROM messages WHERE content = 'once'"); n != 1 {
			t.Fatalf("%d rows for the key, want 1", n)
		}
	})

	t.Run("Pub/Sub ingest and dead letters", func(t *testing.T) {
		ingest := ingestServer(t, f)
		for range 2 { // a redelivery stores nothing twice
			if r := do(t, "POST", ingest+"/", eventBody("p1", []byte("from pubsub"), "2026-11-30T10:00:00Z"), ceHeaders("p1", testSource)); r.status/100 != 2 {
				t.Fatalf("event: %d %s", r.status, r.body)
			}
			if r := do(t, "POST", ingest+"/", eventBody("p2", []byte("\xff not utf-8"), "2026-11-30T10:00:00Z"), ceHeaders("p2", testSource)); r.status/100 != 2 {
				t.Fatalf("bad event: %d %s", r.status, r.body)
			}
		}
		if n := countRows(t, f.url, "SELECT count(*) FROM messages WHERE content = 'from pubsub'"); n != 1 {
			t.Fatalf("%d rows for the event, want 1", n)
		}
		if n := countRows(t, f.url, "SELECT count(*) FROM dead_letters WHERE event_id = 'p2'"); n != 1 {
			t.Fatalf("%d dead letters for the bad event, want 1", n)
		}
	})
}

// TestPgBouncerRestartUnderLoad stops PgBouncer (immediate shutdown, every
// client and server connection dropped) under load and starts it again:
// as with a database restart, errors meanwhile are 503s, the function
// recovers by itself, and every acknowledged write is stored.
func TestPgBouncerRestartUnderLoad(t *testing.T) {
	f, b := pooledFixture(t, map[string]string{"DB_QUERY_TIMEOUT": "1s", "DB_CONNECT_TIMEOUT": "1s"})
	restartUnderLoad(t, f, "the pooler", b.Stop, func() error { return b.Start(context.Background()) })
}
