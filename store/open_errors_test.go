package store_test

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"golang.org/x/oauth2"

	"example.com/pscmessages/store"
	"example.com/pscmessages/store/localpg"
	"example.com/pscmessages/store/localpg/localpgtest"
)

// TestOpenClassifiesRefusalsAsPermanent: what the server refuses for good
// (a role or database that does not exist, a wrong password) is ErrPermanent
// with a message naming the setting to fix, never ErrUnavailable, and never
// quoting the password.
func TestOpenClassifiesRefusalsAsPermanent(t *testing.T) {
	c := localpgtest.Shared(t, localpg.Options{Password: "admin-pw"})
	ctx := t.Context()
	if err := c.Exec(ctx, `CREATE ROLE app LOGIN PASSWORD 'app-pw'`); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name, url, want string
	}{
		// With password logins PostgreSQL does not say that the role is missing.
		{"role does not exist, password login", c.URL("nobody", "app-pw", "postgres", "sslmode=disable"), `password authentication failed for user "nobody": check DB_USER and DB_PASSWORD`},
		{"role does not exist, trust login", cluster.URL("nobody", "", "postgres", "sslmode=disable"), `login refused: role "nobody" does not exist: check DB_USER`},
		{"database does not exist", c.URL("postgres", "admin-pw", "nodb", "sslmode=disable"), `database "nodb" does not exist: check DB_NAME`},
		{"wrong password", c.URL("app", "hunter2", "postgres", "sslmode=disable"), `password authentication failed for user "app": check DB_USER and DB_PASSWORD`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := store.Open(ctx, store.Config{ConnString: tc.url, Migrate: true})
			if !errors.Is(err, store.ErrPermanent) || errors.Is(err, store.ErrUnavailable) {
				t.Fatalf("err = %v, want ErrPermanent and not ErrUnavailable", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %q, want it to contain %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "hunter2") || strings.Contains(err.Error(), "app-pw") || strings.Contains(err.Error(), "admin-pw") {
				t.Fatalf("err quotes a password: %q", err)
			}
		})
	}

	// A warm password pool whose password was changed under it: a new
	// connection is refused for good, so calls fail with ErrPermanent.
	if err := c.Exec(ctx, `CREATE DATABASE warm OWNER app`); err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(ctx, store.Config{ConnString: c.URL("app", "app-pw", "warm", "sslmode=disable"), Migrate: true})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if err := c.Exec(ctx, `ALTER ROLE app PASSWORD 'rotated'`); err != nil {
		t.Fatal(err)
	}
	st.Pool().Reset()
	if _, err := st.List(ctx, store.Page{}); !errors.Is(err, store.ErrPermanent) {
		t.Fatalf("List after the password changed: %v, want ErrPermanent", err)
	}
}

// raceTokens returns one fixed token; the first time it is asked, it makes
// the server accept that token only a moment later, as a token that raced a
// rotation.
type raceTokens struct {
	token string
	once  sync.Once
	later func()
}

func (r *raceTokens) Token() (*oauth2.Token, error) {
	r.once.Do(func() { go r.later() })
	return &oauth2.Token{AccessToken: r.token, Expiry: time.Now().Add(time.Hour)}, nil
}

type fixedTokens string

func (f fixedTokens) Token() (*oauth2.Token, error) {
	return &oauth2.Token{AccessToken: string(f), Expiry: time.Now().Add(time.Hour)}, nil
}

// TestOpenIAMRefusedTokenOnceIsTransient: with IAM, one refused login can be
// a token that raced its rotation, so Open logs in once more before it calls
// the refusal permanent; a token refused twice is permanent.
func TestOpenIAMRefusedTokenOnceIsTransient(t *testing.T) {
	c := localpgtest.Shared(t, localpg.Options{Password: "admin-pw", TLS: true})
	ctx := t.Context()
	role := "fn@my-project.iam"
	ident := pgx.Identifier{role}.Sanitize()
	if err := c.Exec(ctx, "CREATE ROLE "+ident+" LOGIN PASSWORD 'old-token'"); err != nil {
		t.Fatal(err)
	}
	if err := c.Exec(ctx, "CREATE DATABASE iamrace OWNER "+ident); err != nil {
		t.Fatal(err)
	}
	cfg := func(ts oauth2.TokenSource) store.Config {
		return store.Config{Host: c.Host(), Port: c.Port(), Database: "iamrace", User: role,
			IAMAuth: true, SSLMode: "require", TokenSource: ts, Migrate: true}
	}

	race := &raceTokens{token: "new-token", later: func() {
		time.Sleep(200 * time.Millisecond)
		if err := c.Exec(testContext(t), "ALTER ROLE "+ident+" PASSWORD 'new-token'"); err != nil {
			t.Error(err)
		}
	}}
	st, err := store.Open(ctx, cfg(race))
	if err != nil {
		t.Fatalf("Open with a token accepted a moment late: %v", err)
	}
	st.Close()

	_, err = store.Open(ctx, cfg(fixedTokens("never-accepted")))
	if !errors.Is(err, store.ErrPermanent) || !strings.Contains(err.Error(), "cloudsql.iam_authentication") {
		t.Fatalf("Open with a token refused twice: %v, want ErrPermanent naming the IAM checks", err)
	}
	if strings.Contains(err.Error(), "never-accepted") {
		t.Fatalf("err quotes the token: %q", err)
	}
}

// TestOpenUnreachableIsTransient: a server that is not there is
// ErrUnavailable, not ErrPermanent: it may come back.
func TestOpenUnreachableIsTransient(t *testing.T) {
	_, err := store.Open(t.Context(), store.Config{ConnString: fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable&connect_timeout=2", 1), Migrate: true})
	if !errors.Is(err, store.ErrUnavailable) || errors.Is(err, store.ErrPermanent) {
		t.Fatalf("err = %v, want ErrUnavailable", err)
	}
}

// TestOpenUnverifiedCertificateIsPermanent: a server whose certificate the
// configured CA did not sign is refused for good, naming DB_ROOT_CERT.
func TestOpenUnverifiedCertificateIsPermanent(t *testing.T) {
	server := localpgtest.Shared(t, localpg.Options{TLS: true})
	other := localpgtest.Start(t, localpg.Options{TLS: true}) // a CA that did not sign server's certificate
	_, err := store.Open(t.Context(), store.Config{Host: server.Host(), Port: server.Port(), Database: "postgres", User: "postgres",
		Password: "unused", SSLMode: "verify-full", RootCert: other.CAFile, Migrate: true})
	if !errors.Is(err, store.ErrPermanent) || !strings.Contains(err.Error(), "DB_ROOT_CERT") {
		t.Fatalf("err = %v, want ErrPermanent naming DB_ROOT_CERT", err)
	}
}
