package function

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"example.com/pscmessages/store"
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

// TestEveryErrorClassAnswersAsItsRow: each class of error is answered with
// its status, Retry-After and body, and named in spans by its kind. A
// delivery is acknowledged only on 2xx, so the status is Pub/Sub's answer
// too.
func TestEveryErrorClassAnswersAsItsRow(t *testing.T) {
	s := newService(envOf(nil), io.Discard)
	deadline := fmt.Errorf("%w: %w", store.ErrUnavailable, context.DeadlineExceeded)
	cases := []struct {
		err        error
		status     int
		retryAfter string
		body, kind string
	}{
		{errOverBudget, 503, "1", errOverBudget.Error(), "over_memory_budget"},
		{fmt.Errorf("reading: %w", context.Canceled), 499, "", "request canceled", "canceled"},
		{&apiError{status: 405, msg: "use GET", allow: "GET"}, 405, "", "use GET", "http_405"},
		{&poisonError{reason: "not JSON"}, 500, "", "internal error", "poison"},
		{store.ErrNotFound, 404, "", "message not found", "not_found"},
		{fmt.Errorf("%w: %w: 008", store.ErrPermanent, store.ErrMigrationOffline), 500, "", "the database needs a migration that an administrator applies; see the service's logs", "misconfigured"},
		{&store.ConfigError{Var: "DB_NAME", Msg: "required"}, 500, "", "the service is misconfigured; see its logs", "misconfigured"},
		{&unavailableError{retryAfter: 2500 * time.Millisecond, err: deadline}, 503, "3", "database unavailable, retry later", "deadline_exceeded"},
		{fmt.Errorf("%w: reset", store.ErrUnavailable), 503, "1", "database unavailable, retry later", "database_unavailable"},
		{store.ErrClosed, 503, "1", "database unavailable, retry later", "database_unavailable"},
		{store.ErrSchema, 503, "1", "database unavailable, retry later", "schema_not_ready"},
		{fmt.Errorf("%w: check", store.ErrInvalid), 422, "", "the message cannot be stored as given (the database refuses its content); retrying it unchanged will not help", "refused_by_database"},
		{store.ErrKeyReused, 500, "", "internal error", "refused_by_database"},
		{context.DeadlineExceeded, 500, "", "internal error", "deadline_exceeded"},
		{errors.New("surprise"), 500, "", "internal error", "internal"},
	}
	for _, tc := range cases {
		w := httptest.NewRecorder()
		s.writeError(w, httptest.NewRequest("GET", "/", nil), tc.err)
		var got map[string]string
		if err := json.Unmarshal(w.Body.Bytes(), &got); err != nil {
			t.Fatalf("%v: body %q: %v", tc.err, w.Body, err)
		}
		if w.Code != tc.status || w.Header().Get("Retry-After") != tc.retryAfter || got["error"] != tc.body {
			t.Errorf("%v: %d Retry-After %q %q, want %d %q %q", tc.err, w.Code, w.Header().Get("Retry-After"), got["error"], tc.status, tc.retryAfter, tc.body)
		}
		if k := errorKind(tc.err); k != tc.kind {
			t.Errorf("%v: kind %q, want %q", tc.err, k, tc.kind)
		}
	}
}

// TestPermanentFailuresAre500LoggedOnce: a configuration the database
// refuses for good (a role or database that does not exist, a wrong password,
// an IAM token refused twice) answers 500, without Retry-After, and its cause
// is logged at ERROR once however many requests meet it, naming the setting
// to fix and no secret.
func TestPermanentFailuresAre500LoggedOnce(t *testing.T) {
	ctx := context.Background()
	const iamRole = "refused@my-project.iam"
	if err := cluster.Exec(ctx, "DROP ROLE IF EXISTS "+pgx.Identifier{iamRole}.Sanitize()); err != nil {
		t.Fatal(err)
	}
	// The fake metadata server's tokens are never this role's password.
	if err := cluster.Exec(ctx, "CREATE ROLE "+pgx.Identifier{iamRole}.Sanitize()+" LOGIN PASSWORD 'not-a-token'"); err != nil {
		t.Fatal(err)
	}
	db := testDB(t)
	dbName := db[strings.LastIndex(db, "/")+1 : strings.Index(db, "?")]
	cases := []struct {
		name    string
		env     map[string]string
		want    string
		secrets []string
	}{
		{"role does not exist", map[string]string{"DATABASE_URL": cluster.URL("nobody", "nobody-pw", dbName, "sslmode=require")},
			"check DB_USER and DB_PASSWORD", []string{"nobody-pw"}},
		{"database does not exist", map[string]string{"DATABASE_URL": cluster.URL("postgres", "admin-secret", "no_such_db", "sslmode=require")},
			`database \"no_such_db\" does not exist: check DB_NAME`, []string{"admin-secret"}},
		{"wrong password", map[string]string{"DATABASE_URL": cluster.URL("postgres", "hunter2", dbName, "sslmode=require")},
			"check DB_USER and DB_PASSWORD", []string{"hunter2"}},
		{"IAM token refused twice", map[string]string{"DB_HOST": cluster.Host(), "DB_PORT": fmt.Sprint(cluster.Port()),
			"DB_NAME": dbName, "DB_USER": iamRole, "DB_SSLMODE": "require"},
			"cloudsql.iam_authentication=on", []string{"not-a-token"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, tc.env)
			deadline := time.Now().Add(3 * time.Second)
			for n := 0; n < 5 || time.Now().Before(deadline); n++ {
				r := postContent(t, f.srv.URL, "never stored")
				if r.status != 500 || r.header.Get("Retry-After") != "" {
					t.Fatalf("POST %d: %d %s (Retry-After %q), want 500 without Retry-After\nlogs: %s", n, r.status, r.body, r.header.Get("Retry-After"), f.logs)
				}
				if got := r.json(t)["error"]; got != "the service is misconfigured; see its logs" {
					t.Fatalf("POST %d: error %q", n, got)
				}
				time.Sleep(100 * time.Millisecond)
			}
			logs := f.logs.String()
			var errorLines []string
			for _, line := range strings.Split(logs, "\n") {
				if strings.Contains(line, `"severity":"ERROR"`) {
					errorLines = append(errorLines, line)
				}
			}
			if len(errorLines) != 1 || !strings.Contains(errorLines[0], tc.want) {
				t.Fatalf("want exactly one ERROR line containing %q over several attempts, got %d:\n%s", tc.want, len(errorLines), logs)
			}
			assertNoSecrets(t, logs, tc.secrets...)
		})
	}
}
