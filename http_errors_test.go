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

// TestEditTheDatabaseRefusesIs422: a PUT or PATCH of content the database
// refuses (a CHECK constraint) is answered as a POST of it is, 422, and is
// not logged as an internal error: the fault is the content's, and a 500
// at ERROR would page an operator for a client's mistake.
func TestEditTheDatabaseRefusesIs422(t *testing.T) {
	f := newFixture(t, map[string]string{RoutesVar: RoutesAll})
	if r := postContent(t, f.srv.URL, "fine"); r.status != 200 {
		t.Fatalf("POST: %d %s", r.status, r.body)
	}
	execSQL(t, f.url, "ALTER TABLE messages ADD CONSTRAINT no_poison CHECK (content <> 'poison')")
	for _, method := range []string{"PUT", "PATCH"} {
		r := do(t, method, f.srv.URL+"/messages/1", `{"content":"poison"}`, jsonCT)
		if r.status != http.StatusUnprocessableEntity {
			t.Errorf("%s of refused content: %d %s, want 422", method, r.status, r.body)
		}
	}
	if strings.Contains(f.logs.String(), `"severity":"ERROR"`) {
		t.Errorf("refused content logged as an error:\n%s", f.logs)
	}
	if r := do(t, "PUT", f.srv.URL+"/messages/1", `{"content":"edited"}`, jsonCT); r.status != 200 {
		t.Errorf("PUT of acceptable content after a refused one: %d %s", r.status, r.body)
	}
}
