package store

import (
	"errors"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
)

// TestPoolerLoginCodes: of PgBouncer's 08P01 answers, only the relayed or
// own login refusals are permanent; the pooler shutting down, restarting or
// unable to reach the server stays transient (503 + Retry-After). A
// password login (passwordFinal true) is assumed; IAM keeps its one retry.
func TestPoolerLoginCodes(t *testing.T) {
	cases := []struct {
		msg       string
		permanent bool
	}{
		{`database "nosuchdb" does not exist`, true},
		{`no such database: nosuchdb`, true},
		{`role "ghost" does not exist`, true},
		{`no such user: ghost`, true},
		{`password authentication failed for user "app"`, true},
		{`"trust" authentication failed`, true},
		{`pgbouncer cannot connect to server`, false},
		{`database shutting down`, false},
		{`server login has been failing, try again later (server_login_retry)`, false},
		{`server conn crashed?`, false},
		{`query_wait_timeout`, false},
	}
	for _, tc := range cases {
		err := classifyAs(&pgconn.PgError{Severity: "FATAL", Code: "08P01", Message: tc.msg}, true)
		if got := errors.Is(err, ErrPermanent); got != tc.permanent {
			t.Errorf("08P01 %q: permanent = %v, want %v (%v)", tc.msg, got, tc.permanent, err)
		}
		if !tc.permanent && !errors.Is(err, ErrUnavailable) {
			t.Errorf("08P01 %q: %v, want ErrUnavailable", tc.msg, err)
		}
	}
}
