package function

import (
	"context"
	"net/http"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
)

// TestRowTheDatabaseRefusesIs422: content the database refuses for good
// (store.ErrInvalid, here a CHECK constraint) is a permanent client-side
// problem: 422 with a JSON error, not 500 "internal error". Other rows are
// unaffected.
func TestRowTheDatabaseRefusesIs422(t *testing.T) {
	f := newFixture(t, nil)
	jsonCT := map[string]string{"Content-Type": "application/json"}
	if r := do(t, "POST", f.srv.URL+"/messages", `{"content":"fine"}`, jsonCT); r.status != http.StatusCreated {
		t.Fatalf("first POST: %d %s", r.status, r.body)
	}
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, f.url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "ALTER TABLE messages ADD CONSTRAINT no_poison CHECK (content <> 'poison')"); err != nil {
		t.Fatal(err)
	}
	for _, h := range []map[string]string{jsonCT, {"Content-Type": "application/json", "Idempotency-Key": "poison-1"}} {
		r := do(t, "POST", f.srv.URL+"/messages", `{"content":"poison"}`, h)
		if r.status != http.StatusUnprocessableEntity {
			t.Fatalf("refused content: %d %s, want 422", r.status, r.body)
		}
		if msg, _ := r.json(t)["error"].(string); !strings.Contains(msg, "cannot be stored") {
			t.Errorf("error %q does not say the message cannot be stored", msg)
		}
	}
	if r := do(t, "POST", f.srv.URL+"/messages", `{"content":"still fine"}`, jsonCT); r.status != http.StatusCreated {
		t.Fatalf("POST after a refused one: %d %s", r.status, r.body)
	}
}
