//go:build e2e || pgbouncer

package store_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"

	"example.com/pscmessages/store"
	"example.com/pscmessages/store/localpg"
	"example.com/pscmessages/store/localpg/localpgtest"
)

// TestPoolerRelayedRefusalsArePermanent: PgBouncer (1.18) relays the
// server's login FATAL with SQLSTATE 08P01 instead of 3D000/28P01/28000.
// A database, role or password the server refuses for good is still
// ErrPermanent with the same hint as without the pooler, not a 503 with
// Retry-After forever.
func TestPoolerRelayedRefusalsArePermanent(t *testing.T) {
	ctx := t.Context()
	// A trust cluster says which role is missing; a password cluster
	// refuses the pooler's wrong password.
	trust := localpgtest.StartBouncer(t, localpg.BouncerOptions{Upstream: cluster, Users: []string{"postgres", "ghost"}})
	pwCluster := localpgtest.Start(t, localpg.Options{Password: "right-pw"})
	wrongPw := localpgtest.StartBouncer(t, localpg.BouncerOptions{Upstream: pwCluster, Password: "wrong-pw"})
	cases := []struct {
		name, url, want string
	}{
		{"database does not exist", trust.URL("postgres", "", "nosuchdb"), `database "nosuchdb" does not exist: check DB_NAME`},
		{"role does not exist", trust.URL("ghost", "", "postgres"), `login refused: role "ghost" does not exist: check DB_USER`},
		{"user not in the pooler's auth_file", trust.URL("stranger", "", "postgres"), `login refused: "trust" authentication failed: check DB_USER and DB_PASSWORD`},
		{"password refused", wrongPw.URL("postgres", "", "postgres"), `password authentication failed for user "postgres": check DB_USER and DB_PASSWORD`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := store.Open(ctx, store.Config{ConnString: tc.url, Migrate: true, Pooler: store.PoolerTransaction})
			var pgErr *pgconn.PgError
			if errors.As(err, &pgErr) {
				t.Logf("server said %s: %s", pgErr.Code, pgErr.Message)
			}
			if !errors.Is(err, store.ErrPermanent) || errors.Is(err, store.ErrUnavailable) {
				t.Fatalf("err = %v, want ErrPermanent and not ErrUnavailable", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %q, want it to contain %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "wrong-pw") || strings.Contains(err.Error(), "right-pw") {
				t.Fatalf("err quotes a password: %q", err)
			}
		})
	}
}
