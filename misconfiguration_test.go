package function

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

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
