package function

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"example.com/pscmessages/store"
	"example.com/pscmessages/store/metadatatest"
)

// tokensSeen collects every token the fake issued, to prove none is logged.
var tokensSeen sync.Map

func TestIAMLoginAndTokenRotation(t *testing.T) {
	ctx := context.Background()
	role := store.IAMUser(metadatatest.DefaultEmail) // derived, as in production, from the metadata email
	ident := pgx.Identifier{role}.Sanitize()
	if err := cluster.Exec(ctx, "DROP ROLE IF EXISTS "+ident); err != nil {
		t.Fatal(err)
	}
	if err := cluster.Exec(ctx, "CREATE ROLE "+ident+" LOGIN"); err != nil {
		t.Fatal(err)
	}
	db := fmt.Sprintf("iam_%d", dbSeq.Add(1))
	if err := cluster.Exec(ctx, fmt.Sprintf("CREATE DATABASE %s OWNER %s", db, ident)); err != nil {
		t.Fatal(err)
	}
	metaRole.Store(role)
	t.Cleanup(func() { metaRole.Store("") })
	meta.SetTokenTTL(12 * time.Second) // x/oauth2 treats it as expired 10 s early: ~2 s of use
	t.Cleanup(func() { meta.SetTokenTTL(time.Hour) })

	f := newFixture(t, map[string]string{
		"DB_HOST":      cluster.Host(),
		"DB_PORT":      fmt.Sprint(cluster.Port()),
		"DB_NAME":      db,
		"DB_SSLMODE":   "verify-full",
		"DB_ROOT_CERT": cluster.CAFile,
	})
	before := meta.TokenFetches()
	if r := postContent(t, f.srv.URL, "via IAM"); r.status != 200 {
		t.Fatalf("POST with IAM login: %d %s\nlogs: %s", r.status, r.body, f.logs)
	}
	warm := meta.TokenFetches()
	if warm-before != 1 {
		t.Fatalf("cold start fetched %d tokens, want 1", warm-before)
	}
	for i := range 50 {
		if r := postContent(t, f.srv.URL, fmt.Sprint("warm ", i)); r.status != 200 {
			t.Fatalf("warm POST: %d %s", r.status, r.body)
		}
	}
	listContents(t, f.srv.URL)
	if n := meta.TokenFetches() - warm; n != 0 {
		t.Fatalf("a warm pool fetched %d tokens for 51 requests, want 0", n)
	}

	// The token expires and the role's password rotates to the next one. Open
	// connections stay logged in; new ones must log in with the new token.
	time.Sleep(2500 * time.Millisecond)
	oldToken := meta.LastToken()
	// Ending the server side of the pool's connections makes the next
	// request open new ones, as an instance's pool does after a restart.
	if err := cluster.Exec(ctx, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1 AND datname = $2", role, db); err != nil {
		t.Fatal(err)
	}
	if r := postContent(t, f.srv.URL, "after rotation"); r.status != 200 {
		t.Fatalf("POST after token rotation: %d %s\nlogs: %s", r.status, r.body, f.logs)
	}
	if meta.LastToken() == oldToken || meta.TokenFetches()-warm != 1 {
		t.Fatalf("rotation fetched %d tokens, want exactly 1 new one", meta.TokenFetches()-warm)
	}
	// The old token is dead: a login with it fails, so the success above used the new one.
	old, err := pgx.Connect(ctx, cluster.URL(role, oldToken, db, "sslmode=require"))
	if err == nil {
		old.Close(ctx)
		t.Fatal("the rotated-out token still logs in")
	}
	if got := listContents(t, f.srv.URL); got[len(got)-1] != "after rotation" {
		t.Fatalf("last message = %v", got[len(got)-1])
	}
	assertNoSecrets(t, f.logs.String(), oldToken, meta.LastToken())
}

func TestIAMMetadataOutageIs503ThenRecovers(t *testing.T) {
	ctx := context.Background()
	role := store.IAMUser(metadatatest.DefaultEmail)
	ident := pgx.Identifier{role}.Sanitize()
	_ = cluster.Exec(ctx, "CREATE ROLE "+ident+" LOGIN") // may exist from another test
	db := fmt.Sprintf("iamout_%d", dbSeq.Add(1))
	if err := cluster.Exec(ctx, fmt.Sprintf("CREATE DATABASE %s OWNER %s", db, ident)); err != nil {
		t.Fatal(err)
	}
	metaRole.Store(role)
	t.Cleanup(func() { metaRole.Store(""); meta.SetFailing(false) })
	meta.SetFailing(true)
	f := newFixture(t, map[string]string{
		"DB_HOST": cluster.Host(), "DB_PORT": fmt.Sprint(cluster.Port()), "DB_NAME": db,
		"DB_USER": role, "DB_SSLMODE": "require", "DB_CONNECT_TIMEOUT": "2s",
	})
	r := postContent(t, f.srv.URL, "during outage")
	if r.status != 503 || r.header.Get("Retry-After") == "" {
		t.Fatalf("POST while tokens fail: %d %s (Retry-After %q)", r.status, r.body, r.header.Get("Retry-After"))
	}
	meta.SetFailing(false)
	deadline := time.Now().Add(20 * time.Second)
	for {
		r = postContent(t, f.srv.URL, "after outage")
		if r.status == 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not recovered: %d %s\nlogs: %s", r.status, r.body, f.logs)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func TestPasswordAuthNeverLogsSecrets(t *testing.T) {
	ctx := context.Background()
	if err := cluster.Exec(ctx, "DROP ROLE IF EXISTS app_pw"); err != nil {
		t.Fatal(err)
	}
	if err := cluster.Exec(ctx, "CREATE ROLE app_pw LOGIN PASSWORD 's3cret-pw'"); err != nil {
		t.Fatal(err)
	}
	db := fmt.Sprintf("pw_%d", dbSeq.Add(1))
	if err := cluster.Exec(ctx, "CREATE DATABASE "+db+" OWNER app_pw"); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"DB_HOST": cluster.Host(), "DB_PORT": fmt.Sprint(cluster.Port()), "DB_NAME": db, "DB_USER": "app_pw", "DB_PASSWORD": "s3cret-pw"}
	f := newFixture(t, env)
	if r := postContent(t, f.srv.URL, "with a password"); r.status != 200 {
		t.Fatalf("password login: %d %s\n%s", r.status, r.body, f.logs)
	}
	env["DB_PASSWORD"] = "wrong-pw-value"
	bad := newFixture(t, env)
	r := postContent(t, bad.srv.URL, "x")
	// A wrong password never heals by itself: 500, not 503 "retry later".
	if r.status != 500 {
		t.Fatalf("wrong password: %d %s", r.status, r.body)
	}
	// A connection string with a password, given as DATABASE_URL, is never echoed either.
	urlWithPw := cluster.URL("app_pw", "wrong-pw-value", db, "sslmode=require")
	viaURL := newFixture(t, map[string]string{"DATABASE_URL": urlWithPw})
	postContent(t, viaURL.srv.URL, "x")
	for _, logs := range []string{f.logs.String(), bad.logs.String() + string(r.body), viaURL.logs.String()} {
		assertNoSecrets(t, logs, "s3cret-pw", "wrong-pw-value", urlWithPw, "admin-secret")
	}
	if !strings.Contains(bad.logs.String(), "check DB_USER and DB_PASSWORD") {
		t.Fatalf("the failure was not logged: %s", bad.logs)
	}
}

func assertNoSecrets(t testing.TB, text string, secrets ...string) {
	t.Helper()
	for _, s := range secrets {
		if s != "" && strings.Contains(text, s) {
			t.Fatalf("a secret (%d chars) reached the logs or a response", len(s))
		}
	}
	if strings.Contains(text, metadatatest.TokenPrefix) {
		t.Fatal("an access token reached the logs")
	}
}

// TestIAMWithoutUserOffGoogleCloud: IAM mode (DB_HOST, no DB_PASSWORD) with
// DB_USER unset and no metadata server to name the service account is a
// configuration error naming DB_USER: the configuration check refuses it at
// start, and a request is answered as misconfigured (500, once at Error in
// the log), not 503 for ever.
func TestIAMWithoutUserOffGoogleCloud(t *testing.T) {
	// Credentials that need no metadata server, and none to be found.
	creds := filepath.Join(t.TempDir(), "adc.json")
	if err := os.WriteFile(creds, []byte(`{"type":"authorized_user","client_id":"c","client_secret":"s","refresh_token":"r"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("GOOGLE_APPLICATION_CREDENTIALS", creds)
	t.Setenv("GCE_METADATA_HOST", "")
	env := map[string]string{"DB_HOST": "127.0.0.1", "DB_PORT": "1", "DB_NAME": "d"}
	f := newFixture(t, env)
	cfg, err := f.svc.config()
	if err != nil {
		t.Fatal(err)
	}
	var ce *store.ConfigError
	if err := cfg.db.Check(); !errors.As(err, &ce) || ce.Var != "DB_USER" {
		t.Fatalf("configuration check: %v, want a ConfigError naming DB_USER", err)
	}
	for range 2 {
		if r := do(t, "GET", f.srv.URL+"/", "", nil); r.status != http.StatusInternalServerError {
			t.Fatalf("GET: %d %s, want 500 (misconfigured)\nlogs:\n%s", r.status, r.body, f.logs)
		}
	}
	if !strings.Contains(f.logs.String(), "DB_USER") {
		t.Fatalf("the log does not name DB_USER:\n%s", f.logs)
	}
}
