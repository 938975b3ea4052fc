package store

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestConfigFromEnv(t *testing.T) {
	cases := []struct {
		name    string
		env     map[string]string
		wantVar string // the variable an error must name; "" = valid
		check   func(t *testing.T, c Config)
	}{
		{name: "nothing configured", env: nil, wantVar: "DB_HOST"},
		{name: "IAM by default", env: map[string]string{"DB_HOST": "10.0.0.100", "DB_NAME": "postgres"}, check: func(t *testing.T, c Config) {
			if !c.IAMAuth || c.Port != 5432 || c.User != "" || !c.Migrate {
				t.Fatalf("%+v", c)
			}
		}},
		{name: "password switches IAM off", env: map[string]string{"DB_HOST": "h", "DB_NAME": "d", "DB_USER": "u", "DB_PASSWORD": "p"}, check: func(t *testing.T, c Config) {
			if c.IAMAuth {
				t.Fatal("IAM with a password")
			}
		}},
		{name: "password needs user", env: map[string]string{"DB_HOST": "h", "DB_NAME": "d", "DB_PASSWORD": "p"}, wantVar: "DB_USER"},
		{name: "host needs name", env: map[string]string{"DB_HOST": "h"}, wantVar: "DB_NAME"},
		{name: "bad port", env: map[string]string{"DB_HOST": "h", "DB_NAME": "d", "DB_PORT": "70000"}, wantVar: "DB_PORT"},
		{name: "port not a number", env: map[string]string{"DB_HOST": "h", "DB_NAME": "d", "DB_PORT": "x"}, wantVar: "DB_PORT"},
		{name: "IAM refuses disable", env: map[string]string{"DB_HOST": "h", "DB_NAME": "d", "DB_SSLMODE": "disable"}, wantVar: "DB_SSLMODE"},
		{name: "IAM refuses prefer", env: map[string]string{"DB_HOST": "h", "DB_NAME": "d", "DB_SSLMODE": "prefer"}, wantVar: "DB_SSLMODE"},
		{name: "unknown sslmode", env: map[string]string{"DB_HOST": "h", "DB_NAME": "d", "DB_SSLMODE": "always"}, wantVar: "DB_SSLMODE"},
		{name: "verify-ca needs root cert", env: map[string]string{"DB_HOST": "h", "DB_NAME": "d", "DB_SSLMODE": "verify-ca"}, wantVar: "DB_ROOT_CERT"},
		{name: "bad pool size", env: map[string]string{"DB_HOST": "h", "DB_NAME": "d", "DB_MAX_CONNS": "0"}, wantVar: "DB_MAX_CONNS"},
		{name: "bad timeout", env: map[string]string{"DB_HOST": "h", "DB_NAME": "d", "DB_QUERY_TIMEOUT": "soon"}, wantVar: "DB_QUERY_TIMEOUT"},
		{name: "bad migrate flag", env: map[string]string{"DB_HOST": "h", "DB_NAME": "d", "DB_MIGRATE": "maybe"}, wantVar: "DB_MIGRATE"},
		{name: "settings", env: map[string]string{"DB_HOST": "h", "DB_NAME": "d", "DB_MAX_CONNS": "3", "DB_QUERY_TIMEOUT": "250ms", "DB_MIGRATE": "false"}, check: func(t *testing.T, c Config) {
			if c.MaxConns != 3 || c.QueryTimeout != 250*time.Millisecond || c.Migrate {
				t.Fatalf("%+v", c)
			}
		}},
		{name: "DATABASE_URL replaces DB_*", env: map[string]string{"DATABASE_URL": "postgres://u@h/d", "DB_SSLMODE": "disable"}, check: func(t *testing.T, c Config) {
			if c.IAMAuth {
				t.Fatal("IAM without DB_IAM_AUTH")
			}
		}},
		{name: "DATABASE_URL with IAM", env: map[string]string{"DATABASE_URL": "postgres://u@h/d?sslmode=require", "DB_IAM_AUTH": "true"}, check: func(t *testing.T, c Config) {
			if !c.IAMAuth {
				t.Fatal("DB_IAM_AUTH ignored")
			}
		}},
		{name: "bad DB_IAM_AUTH", env: map[string]string{"DATABASE_URL": "postgres://u@h/d", "DB_IAM_AUTH": "yes please"}, wantVar: "DB_IAM_AUTH"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := ConfigFromEnv(func(k string) string { return tc.env[k] })
			if tc.wantVar != "" {
				var ce *ConfigError
				if !errors.As(err, &ce) || ce.Var != tc.wantVar || !strings.HasPrefix(err.Error(), tc.wantVar+": ") {
					t.Fatalf("error = %v, want one naming %s", err, tc.wantVar)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tc.check != nil {
				tc.check(t, c)
			}
		})
	}
}

// TestPoolConfigNeverSendsTokenInPlaintext covers the connection strings whose
// sslmode could fall back to plaintext: IAM refuses them all.
func TestPoolConfigNeverSendsTokenInPlaintext(t *testing.T) {
	cases := []struct {
		url string
		ok  bool
	}{
		{"postgres://u@h/d?sslmode=disable", false},
		{"postgres://u@h/d?sslmode=allow", false},
		{"postgres://u@h/d?sslmode=prefer", false},
		{"postgres://u@h/d", false}, // pgx defaults to prefer
		{"postgres://u@h/d?sslmode=require", true},
		{"host=h user=u dbname=d sslmode=require", true},
	}
	for _, tc := range cases {
		c := Config{ConnString: tc.url, IAMAuth: true}
		_, err := c.poolConfig()
		var ce *ConfigError
		if tc.ok != (err == nil) || (err != nil && (!errors.As(err, &ce) || ce.Var != "DATABASE_URL")) {
			t.Errorf("%s: err = %v, want ok=%v", tc.url, err, tc.ok)
		}
	}
}

func TestPoolConfigHidesPassword(t *testing.T) {
	for _, bad := range []string{
		"postgres://u:hunter2@h:notaport/d",
		"host=h user=u password=my hunter2 dbname=d", // pgx quotes the fragment after the space
	} {
		c := Config{ConnString: bad}
		_, err := c.poolConfig()
		if err == nil || strings.Contains(err.Error(), "hunter2") {
			t.Fatalf("%q: err = %v", bad, err)
		}
	}
	c := Config{Host: "h", Port: 5432, Database: "d", User: "u", Password: "hunter2", SSLMode: "require"}
	pc, err := c.poolConfig()
	if err != nil || pc.ConnConfig.Password != "hunter2" || strings.Contains(pc.ConnString(), "hunter2") {
		t.Fatalf("password handling: %v", err)
	}
}

func TestIAMUser(t *testing.T) {
	for in, want := range map[string]string{
		"fn@proj.iam.gserviceaccount.com": "fn@proj.iam",
		"fn@proj.iam":                     "fn@proj.iam",
		" fn@p.iam.gserviceaccount.com\n": "fn@p.iam",
	} {
		if got := IAMUser(in); got != want {
			t.Errorf("IAMUser(%q) = %q, want %q", in, got, want)
		}
	}
}
