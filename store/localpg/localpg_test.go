package localpg_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"example.com/pscmessages/store/localpg"
	"example.com/pscmessages/store/localpg/localpgtest"
)

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// query runs sql on url and returns the first column of its single row.
func query[T any](ctx context.Context, url, sql string) (T, error) {
	var v T
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return v, err
	}
	defer conn.Close(ctx)
	err = conn.QueryRow(ctx, sql).Scan(&v)
	return v, err
}

func TestConnect(t *testing.T) {
	t.Parallel()
	const password = `pa'ss\wo rd@:/`
	type attempt struct {
		name     string
		password string
		params   func(c *localpg.Cluster) []string
		wantErr  string // in the error; "" = must connect
		wantSSL  bool
	}
	tests := []struct {
		name     string
		opts     localpg.Options
		settings map[string]string // SHOW name = value
		attempts []attempt
	}{{
		name:     "trust",
		opts:     localpg.Options{Settings: map[string]string{"max_connections": "42", "application_name": "it's"}},
		settings: map[string]string{"fsync": "off", "max_connections": "42", "application_name": "it's", "listen_addresses": "127.0.0.1", "unix_socket_directories": "", "ssl": "off"},
		attempts: []attempt{{name: "no password"}, {name: "any password", password: "whatever"}},
	}, {
		name:     "password",
		opts:     localpg.Options{Password: password},
		settings: map[string]string{"password_encryption": "scram-sha-256"},
		attempts: []attempt{
			{name: "right", password: password},
			{name: "wrong", password: "nope", wantErr: "28P01"},
			{name: "none", wantErr: "28P01"},
		},
	}, {
		name:     "tls",
		opts:     localpg.Options{TLS: true, Durable: true},
		settings: map[string]string{"fsync": "on", "ssl": "on"},
		attempts: []attempt{
			{name: "verify-full", params: func(c *localpg.Cluster) []string {
				return []string{"sslmode=verify-full", "sslrootcert=" + c.CAFile}
			}, wantSSL: true},
			{name: "unknown CA", params: func(*localpg.Cluster) []string {
				return []string{"sslmode=verify-full"}
			}, wantErr: "certificate"},
			{name: "plain"},
		},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ctx := testContext(t)
			c := localpgtest.Start(t, tt.opts)
			if (c.CAFile != "") != tt.opts.TLS {
				t.Errorf("CAFile = %q with TLS %v", c.CAFile, tt.opts.TLS)
			}
			for name, want := range tt.settings {
				got, err := query[string](ctx, c.SuperuserURL("postgres"), "SHOW "+name)
				if err != nil || got != want {
					t.Errorf("SHOW %s = %q, %v; want %q", name, got, err, want)
				}
			}
			for _, a := range tt.attempts {
				var params []string
				if a.params != nil {
					params = a.params(c)
				}
				url := c.URL("postgres", a.password, "postgres", params...)
				ssl, err := query[bool](ctx, url, "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
				switch {
				case a.wantErr == "" && err != nil:
					t.Errorf("%s: %v", a.name, err)
				case a.wantErr != "" && (err == nil || !strings.Contains(err.Error(), a.wantErr)):
					t.Errorf("%s: error %v, want one with %q", a.name, err, a.wantErr)
				case err == nil && ssl != a.wantSSL:
					t.Errorf("%s: ssl = %v, want %v", a.name, ssl, a.wantSSL)
				}
			}
		})
	}
}

func TestStopStart(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	c := localpgtest.Start(t, localpg.Options{})
	if err := c.Exec(ctx, "CREATE TABLE kept (x int); INSERT INTO kept VALUES (1)"); err != nil {
		t.Fatal(err)
	}
	port := c.Port()
	for range 2 { // idempotent
		if err := c.Stop(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := query[int](ctx, c.SuperuserURL("postgres"), "SELECT 1"); err == nil {
		t.Fatal("connected to a stopped cluster")
	}
	for range 2 {
		if err := c.Start(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if c.Port() != port {
		t.Errorf("port changed from %d to %d", port, c.Port())
	}
	// Exec's kept connection died with the server: it connects again.
	if err := c.Exec(ctx, "INSERT INTO kept VALUES (2)"); err != nil {
		t.Errorf("Exec after a restart: %v", err)
	}
	if n, err := query[int](ctx, c.SuperuserURL("postgres"), "SELECT count(*) FROM kept"); err != nil || n != 2 {
		t.Errorf("after restart: %d rows, %v; want 2", n, err)
	}
}

func TestKill(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	c := localpgtest.Start(t, localpg.Options{Durable: true}) // keep commits across the crash
	if err := c.Exec(ctx, "CREATE TABLE kept (x int); INSERT INTO kept VALUES (1)"); err != nil {
		t.Fatal(err)
	}
	if err := c.Kill(); err != nil {
		t.Fatal(err)
	}
	if _, err := query[int](ctx, c.SuperuserURL("postgres"), "SELECT 1"); err == nil {
		t.Fatal("connected to a killed cluster")
	}
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if n, err := query[int](ctx, c.SuperuserURL("postgres"), "SELECT count(*) FROM kept"); err != nil || n != 1 {
		t.Errorf("after crash recovery: %d rows, %v; want 1", n, err)
	}
	// Exec's kept connection died with the server: it connects again.
	if err := c.Exec(ctx, "SELECT 1"); err != nil {
		t.Errorf("Exec after crash recovery: %v", err)
	}
}

func TestReuseDir(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	// Not t.TempDir: its directories are 0700, closed to the server user
	// when we are root.
	parent, err := os.MkdirTemp("", "localpg-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(parent) })
	if err := os.Chmod(parent, 0o755); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(parent, "a", "data")

	first, err := localpg.Start(ctx, localpg.Options{Dir: dir, Password: "one"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { first.Destroy() })
	if err := first.Exec(ctx, "CREATE TABLE kept (x int); INSERT INTO kept VALUES (1)"); err != nil {
		t.Fatal(err)
	}

	// A second run while the first one's server still runs, as after a
	// crash of the local runner, with another password.
	second := localpgtest.Start(t, localpg.Options{Dir: dir, Password: "two"})
	if second.Port() == first.Port() {
		t.Errorf("both runs got port %d", second.Port())
	}
	if n, err := query[int](ctx, second.SuperuserURL("postgres"), "SELECT count(*) FROM kept"); err != nil || n != 1 {
		t.Errorf("reused dir: %d rows, %v; want 1", n, err)
	}
	if err := second.Destroy(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "PG_VERSION")); err != nil {
		t.Errorf("Destroy removed a caller's Dir: %v", err)
	}
}

// syncBuffer is a bytes.Buffer for a writer and a reader in different
// goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

func TestLogWriter(t *testing.T) {
	t.Parallel()
	var log syncBuffer
	c := localpgtest.Start(t, localpg.Options{Log: &log})
	if err := c.Destroy(); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"ready to accept connections", "database system is shut down"} {
		if !strings.Contains(log.String(), want) {
			t.Errorf("log lacks %q:\n%s", want, log.String())
		}
	}
	if _, err := os.Stat(c.Dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Destroy left %s: %v", c.Dir, err)
	}
}

func TestURL(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	c := localpgtest.Start(t, localpg.Options{})
	tests := []struct {
		user, password, database string
		params                   []string
		wantTLS                  bool
	}{
		{user: "postgres", database: "postgres"},
		{user: "postgres", password: "p@ss:/?#%", database: `my "db"/with?odd&chars`},
		{user: "u@x:y", database: "postgres", params: []string{"sslmode=require", "application_name=a&b"}, wantTLS: true},
	}
	for _, tt := range tests {
		url := c.URL(tt.user, tt.password, tt.database, tt.params...)
		cfg, err := pgx.ParseConfig(url)
		if err != nil {
			t.Errorf("%s: %v", url, err)
			continue
		}
		if cfg.Host != c.Host() || int(cfg.Port) != c.Port() || cfg.User != tt.user || cfg.Password != tt.password || cfg.Database != tt.database || (cfg.TLSConfig != nil) != tt.wantTLS {
			t.Errorf("%s parses as %s:%d user %q password %q database %q TLS %v", url, cfg.Host, cfg.Port, cfg.User, cfg.Password, cfg.Database, cfg.TLSConfig != nil)
		}
		if len(tt.params) > 1 && cfg.RuntimeParams["application_name"] != "a&b" {
			t.Errorf("%s: application_name = %q", url, cfg.RuntimeParams["application_name"])
		}
	}

	// The odd database name end to end.
	name := tests[1].database
	if err := c.CreateDatabase(ctx, name); err != nil {
		t.Fatal(err)
	}
	if got, err := query[string](ctx, c.URL("postgres", tests[1].password, name), "SELECT current_database()"); err != nil || got != name {
		t.Errorf("current_database() = %q, %v; want %q", got, err, name)
	}
}

func TestFindBinDir(t *testing.T) {
	dir, err := localpg.FindBinDir()
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("PG_BINDIR", t.TempDir())
	if _, err := localpg.FindBinDir(); !errors.Is(err, localpg.ErrNotInstalled) || !strings.Contains(err.Error(), "apt-get install postgresql") {
		t.Errorf("empty PG_BINDIR: %v, want ErrNotInstalled with the install hint", err)
	}
	t.Setenv("PG_BINDIR", dir)
	if got, err := localpg.FindBinDir(); got != dir || err != nil {
		t.Errorf("PG_BINDIR=%s: got %q, %v", dir, got, err)
	}
}

// TestPasswordFile: a cluster with a PasswordFile refuses logins without the
// password, keeps it across restarts of the same Dir, and keeps the file 0600.
func TestPasswordFile(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	parent, err := os.MkdirTemp("", "localpg-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(parent) })
	if err := os.Chmod(parent, 0o755); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(parent, "data")
	pass := filepath.Join(parent, "pgpass")
	withFile := func(c *localpg.Cluster) string {
		return c.URL("postgres", "", "postgres", "passfile="+pass)
	}

	c := localpgtest.Start(t, localpg.Options{Dir: dir, PasswordFile: pass})
	if _, err := query[int](ctx, withFile(c), "SELECT 1"); err != nil {
		t.Fatalf("with the passfile: %v", err)
	}
	if _, err := query[int](ctx, c.URL("postgres", "", "postgres", "passfile="+os.DevNull), "SELECT 1"); err == nil {
		t.Fatal("logged in without the password")
	}
	first, err := os.ReadFile(pass)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Destroy(); err != nil {
		t.Fatal(err)
	}

	if err := os.Chmod(pass, 0o644); err != nil { // someone loosened it
		t.Fatal(err)
	}
	again := localpgtest.Start(t, localpg.Options{Dir: dir, PasswordFile: pass})
	if _, err := query[int](ctx, withFile(again), "SELECT 1"); err != nil {
		t.Fatalf("after a restart: %v", err)
	}
	if now, _ := os.ReadFile(pass); !bytes.Equal(now, first) {
		t.Error("the password changed across restarts")
	}
	if fi, err := os.Stat(pass); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("password file mode %v, %v; want 0600", fi.Mode().Perm(), err)
	}
}

// A statement that fails inside a transaction it opened leaves Exec's
// connection aborted; the next Exec must not run on it.
func TestExecAfterAFailedTransaction(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	c := localpgtest.Start(t, localpg.Options{})
	if err := c.Exec(ctx, "BEGIN; SELECT 1/0; COMMIT"); err == nil {
		t.Fatal("a division by zero succeeded")
	}
	if err := c.Exec(ctx, "CREATE TABLE after_failure (x int)"); err != nil {
		t.Errorf("Exec after a failed transaction: %v", err)
	}
}
