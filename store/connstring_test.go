package store

import (
	"errors"
	"strings"
	"testing"
)

// TestConfigFromEnvRefusesBadDatabaseURL: a DATABASE_URL that cannot be
// parsed stops the configuration (and so `go run ./cmd/pscmessages`) at start, naming the
// variable and what would be valid, never quoting the password.
func TestConfigFromEnvRefusesBadDatabaseURL(t *testing.T) {
	cases := []struct {
		url, want string
	}{
		{"not-a-url", "not a PostgreSQL connection string: use a URL, postgres://USER:PASSWORD@HOST:5432/DATABASE"},
		{"postgress://u:hunter2@h/db", `the URL scheme must be postgres:// or postgresql://, not "postgress://"`},
		{"mysql://u:hunter2@h/db", `not "mysql://"`},
		{"hunter2:x@y://h/db", "the URL scheme must be postgres:// or postgresql:// (for example"},
		{"postgres://u:hunter2@h:abc/db", "the port must be a number from 1 to 65535"},
		{"postgres://u:hunter2@h/db?sslmode=bogus", "sslmode must be one of disable, allow, prefer, require, verify-ca, verify-full"},
		{"postgres://u:hunt er2@h/db", "percent-encode special characters"},
		{"host=h port=x password=hunter2", "pgx cannot parse these keyword=value pairs"},
	}
	for _, tc := range cases {
		t.Run(tc.url, func(t *testing.T) {
			_, err := ConfigFromEnv(func(k string) string {
				if k == "DATABASE_URL" {
					return tc.url
				}
				return ""
			})
			var ce *ConfigError
			if !errors.As(err, &ce) || ce.Var != "DATABASE_URL" {
				t.Fatalf("err = %v, want a ConfigError naming DATABASE_URL", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %q, want it to contain %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "hunter2") || strings.Contains(err.Error(), "hunt er2") {
				t.Fatalf("err quotes the password: %q", err)
			}
		})
	}
}

// TestConfigFromEnvChecksIAMTLSAtStart: DB_IAM_AUTH with a DATABASE_URL that
// could send the token in plaintext is refused by ConfigFromEnv, not first
// by the pool on a request.
func TestConfigFromEnvChecksIAMTLSAtStart(t *testing.T) {
	env := map[string]string{"DATABASE_URL": "postgres://u@127.0.0.1:5432/d?sslmode=disable", "DB_IAM_AUTH": "true"}
	_, err := ConfigFromEnv(func(k string) string { return env[k] })
	var ce *ConfigError
	if !errors.As(err, &ce) || ce.Var != "DATABASE_URL" || !strings.Contains(err.Error(), "TLS") {
		t.Fatalf("err = %v", err)
	}
}

// TestConfigCheckReadsFiles: ConfigFromEnv leaves files to Check (so a
// deployment's configuration can be validated where its files are not
// mounted), and Check names the file it cannot read.
func TestConfigCheckReadsFiles(t *testing.T) {
	for _, env := range []map[string]string{
		{"DATABASE_URL": "postgres://u:hunter2@h/db?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem"},
		{"DB_HOST": "10.0.0.1", "DB_NAME": "d", "DB_SSLMODE": "verify-full", "DB_ROOT_CERT": "/nonexistent/ca.pem"},
	} {
		c, err := ConfigFromEnv(func(k string) string { return env[k] })
		if err != nil {
			t.Fatalf("%v: ConfigFromEnv: %v", env, err)
		}
		err = c.Check()
		if err == nil || !strings.Contains(err.Error(), `"/nonexistent/ca.pem"`) || strings.Contains(err.Error(), "hunter2") {
			t.Fatalf("%v: Check = %v, want it to name the file", env, err)
		}
	}
}
