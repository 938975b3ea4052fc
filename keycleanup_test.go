package function

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// TestKeyCleanupFailureLogsThroughService: a failed cleanup of expired
// idempotency keys is logged by the service's own logger (structured like
// its other lines), not by the process's global one.
func TestKeyCleanupFailureLogsThroughService(t *testing.T) {
	f := newFixture(t, map[string]string{"LOG_FORMAT": "json"})
	if r := do(t, "GET", f.srv.URL+"/", "", nil); r.status != http.StatusOK { // migrates
		t.Fatalf("GET: %d %s", r.status, r.body)
	}
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, f.url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, `CREATE FUNCTION refuse_cleanup() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'cleanup refused by a test'; END $$;
		CREATE TRIGGER refuse_cleanup BEFORE DELETE ON idempotency_keys FOR EACH STATEMENT EXECUTE FUNCTION refuse_cleanup()`); err != nil {
		t.Fatal(err)
	}
	if r := do(t, "POST", f.srv.URL+"/", `{"content":"starts a cleanup"}`, jsonCT); r.status != http.StatusOK {
		t.Fatalf("POST: %d %s", r.status, r.body)
	}
	for deadline := time.Now().Add(10 * time.Second); !strings.Contains(f.logs.String(), "deleting expired idempotency keys failed"); {
		if time.Now().After(deadline) {
			t.Fatalf("no cleanup failure in the service's log:\n%s", f.logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, line := range strings.Split(f.logs.String(), "\n") {
		if strings.Contains(line, "deleting expired idempotency keys failed") && !strings.Contains(line, `"severity":"WARNING"`) {
			t.Errorf("cleanup failure not in the service's JSON format: %s", line)
		}
	}
}
