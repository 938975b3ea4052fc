package function

import (
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"example.com/pscmessages/store"
)

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
