package localrun

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"example.com/pscmessages/store"
)

const mainArgsEnv = "PSCMESSAGES_TEST_MAIN_ARGS"

// TestMainProcess is not a test: it is the child process that runs main with
// the arguments in PSCMESSAGES_TEST_MAIN_ARGS, as `go run ./cmd/pscmessages ARGS` would.
func TestMainProcess(t *testing.T) {
	args, ok := os.LookupEnv(mainArgsEnv)
	if !ok {
		return
	}
	os.Args = append([]string{"pscmessages"}, strings.Fields(args)...)
	Main("pscmessages", Commands())
	os.Exit(0)
}

// runMain runs `go run ./cmd/pscmessages ARGS` (main, in a child process) with env on top
// of an environment cleaned of every setting the runner reads, and returns
// its stdout, stderr and exit code. It fails the test if the child is still
// running after 30 s: every case here must stop at once.
func runMain(t *testing.T, env map[string]string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestMainProcess$")
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		switch {
		case name == "FUNCTION_TARGET", name == "DATABASE_URL", name == "PORT", name == "HOST",
			name == "LOG_LEVEL", name == "LOG_FORMAT", name == "HTTP_ROUTES", name == "LOCAL_PGDATA",
			strings.HasPrefix(name, "MAX_"), strings.HasPrefix(name, "PUBSUB_"), strings.HasPrefix(name, "DB_"):
			continue
		}
		cmd.Env = append(cmd.Env, kv)
	}
	// Should a case start serving after all, it uses its own data folder
	// and port, and the timeout above ends it.
	cmd.Env = append(cmd.Env, mainArgsEnv+"="+strings.Join(args, " "), "LOCAL_PGDATA="+t.TempDir()+"/pgdata", "PORT="+psFreePort(t))
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	var out, errb strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("go run ./cmd/pscmessages %s did not stop within 30 s\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), out.String(), errb.String())
	}
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		code = exit.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return out.String(), errb.String(), code
}

// TestServeRefusesBadConfigurationAtStart: every setting that can be checked
// without the network stops `go run ./cmd/pscmessages` before it starts anything, with
// one line naming the variable and what is valid, and never the secret.
func TestServeRefusesBadConfigurationAtStart(t *testing.T) {
	const secret = "hunter2"
	goodURL := "postgres://u:" + secret + "@127.0.0.1:1/d?sslmode=disable"
	cases := []struct {
		name string
		env  map[string]string
		want string
	}{
		{"DATABASE_URL not a URL", map[string]string{"DATABASE_URL": "not-a-url"},
			"DATABASE_URL: not a PostgreSQL connection string: use a URL, postgres://USER:PASSWORD@HOST:5432/DATABASE?sslmode=require"},
		{"DATABASE_URL bad scheme", map[string]string{"DATABASE_URL": "postgress://u:" + secret + "@h/db"},
			`DATABASE_URL: the URL scheme must be postgres:// or postgresql://, not "postgress://"`},
		{"DATABASE_URL bad port", map[string]string{"DATABASE_URL": "postgres://u:" + secret + "@h:54x/db"},
			"DATABASE_URL: the port must be a number from 1 to 65535"},
		{"DB_IAM_AUTH with the local database", map[string]string{"DB_IAM_AUTH": "true"},
			"DB_IAM_AUTH: IAM database authentication needs a Cloud SQL instance, but neither DATABASE_URL nor DB_HOST is set"},
		{"DB_IAM_AUTH with a plaintext DATABASE_URL", map[string]string{"DB_IAM_AUTH": "true", "DATABASE_URL": goodURL},
			"DATABASE_URL: IAM authentication needs TLS"},
		{"PORT not a number", map[string]string{"PORT": "abc"}, "PORT: must be a port number from 1 to 65535"},
		{"DB_PASSWORD without DB_HOST", map[string]string{"DB_PASSWORD": secret}, "DB_PASSWORD: is set but DB_HOST is not"},
		{"DB_HOST without DB_NAME", map[string]string{"DB_HOST": "10.0.0.1"}, "DB_NAME: required when DB_HOST is set"},
		{"DB_PASSWORD without DB_USER", map[string]string{"DB_HOST": "10.0.0.1", "DB_NAME": "d", "DB_PASSWORD": secret}, "DB_USER: required with DB_PASSWORD"},
		{"IAM over plaintext", map[string]string{"DB_HOST": "10.0.0.1", "DB_NAME": "d", "DB_SSLMODE": "disable"}, "DB_SSLMODE: IAM authentication"},
		{"unknown sslmode", map[string]string{"DB_HOST": "10.0.0.1", "DB_NAME": "d", "DB_SSLMODE": "on"}, "DB_SSLMODE: must be one of"},
		{"verify-full without a CA", map[string]string{"DB_HOST": "10.0.0.1", "DB_NAME": "d", "DB_SSLMODE": "verify-full"}, "DB_ROOT_CERT: required with DB_SSLMODE=verify-full"},
		{"unreadable CA", map[string]string{"DB_HOST": "10.0.0.1", "DB_NAME": "d", "DB_SSLMODE": "verify-full", "DB_ROOT_CERT": "/nonexistent/ca.pem"}, `DB_ROOT_CERT: cannot read the CA file "/nonexistent/ca.pem"`},
		{"DB_PORT", map[string]string{"DB_HOST": "10.0.0.1", "DB_NAME": "d", "DB_PORT": "x"}, "DB_PORT: must be an integer from 1 to 65535"},
		{"DB_MAX_CONNS", map[string]string{"DATABASE_URL": goodURL, "DB_MAX_CONNS": "0"}, "DB_MAX_CONNS: must be an integer from 1 to 1000"},
		{"DB_CONNECT_TIMEOUT", map[string]string{"DATABASE_URL": goodURL, "DB_CONNECT_TIMEOUT": "5"}, `DB_CONNECT_TIMEOUT: must be a positive duration such as "5s"`},
		{"DB_QUERY_TIMEOUT", map[string]string{"DATABASE_URL": goodURL, "DB_QUERY_TIMEOUT": "-1s"}, "DB_QUERY_TIMEOUT: must be a positive duration"},
		{"DB_MIGRATE", map[string]string{"DATABASE_URL": goodURL, "DB_MIGRATE": "sometimes"}, "DB_MIGRATE: must be true or false"},
		{"MAX_CONTENT_BYTES", map[string]string{"DATABASE_URL": goodURL, "MAX_CONTENT_BYTES": "64k"}, "MAX_CONTENT_BYTES: must be an integer"},
		{"MAX_BODY_BYTES", map[string]string{"DATABASE_URL": goodURL, "MAX_BODY_BYTES": "1"}, "MAX_BODY_BYTES: must be an integer"},
		{"HTTP_ROUTES", map[string]string{"DATABASE_URL": goodURL, "HTTP_ROUTES": "everything"}, "HTTP_ROUTES"},
		{"LOG_LEVEL", map[string]string{"DATABASE_URL": goodURL, "LOG_LEVEL": "loud"}, "LOG_LEVEL: must be debug, info (the default), warn or error"},
		{"LOG_FORMAT", map[string]string{"DATABASE_URL": goodURL, "LOG_FORMAT": "xml"}, "LOG_FORMAT: must be json (Cloud Logging) or text"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			stdout, stderr, code := runMain(t, tc.env)
			if code != 1 {
				t.Fatalf("exit code %d, want 1\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
			}
			if !strings.Contains(stderr, "serve: invalid configuration: "+tc.want) {
				t.Fatalf("stderr does not contain %q:\n%s", "serve: invalid configuration: "+tc.want, stderr)
			}
			if strings.Contains(stdout+stderr, secret) {
				t.Fatalf("the output quotes the secret:\n%s\n%s", stdout, stderr)
			}
			if strings.Contains(stdout, "serving") || strings.Contains(stdout, "started local PostgreSQL") {
				t.Fatalf("it started something before refusing:\n%s", stdout)
			}
		})
	}
}

// TestServeReportsBadSettingsOnceBeforeLocalPostgres: a bad setting of the
// functions' own stops the runner before it starts its local PostgreSQL
// (not after a wait for a server it then leaves), and is reported once: on
// stderr, not also as a log line on stdout.
func TestServeReportsBadSettingsOnceBeforeLocalPostgres(t *testing.T) {
	bad := map[string]string{"LOG_LEVEL": "loud", "LOG_FORMAT": "xml", "HTTP_ROUTES": "everything", "DB_MAX_CONNS": "0", "OTEL_TRACES_SAMPLER": "sometimes"}
	for name, value := range bad {
		for _, database := range []string{"local", "DATABASE_URL"} {
			t.Run(name+" with "+database, func(t *testing.T) {
				env := map[string]string{name: value, "LOCAL_PGDATA": localDataDir(t)}
				if database == "DATABASE_URL" {
					env["DATABASE_URL"] = "postgres://u@127.0.0.1:1/d?sslmode=disable"
				}
				stdout, stderr, code := runMain(t, env)
				if code != 1 {
					t.Fatalf("exit code %d, want 1\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
				}
				if strings.Contains(stdout, "started local PostgreSQL") || strings.Contains(stdout, "serving") {
					t.Fatalf("it started something before refusing %s:\n%s", name, stdout)
				}
				if n := strings.Count(stdout+stderr, name+":"); n != 1 {
					t.Fatalf("%s reported %d times, want once\nstdout:\n%s\nstderr:\n%s", name, n, stdout, stderr)
				}
				if !strings.Contains(stderr, "serve: invalid configuration: "+name+": ") {
					t.Fatalf("stderr does not name %s:\n%s", name, stderr)
				}
			})
		}
	}
}

// TestServeEnvErrorsAreConfigErrors pins that the runner's own settings fail
// with the same error type as the function's, so one errors.As finds every
// misconfiguration and its variable.
func TestServeEnvErrorsAreConfigErrors(t *testing.T) {
	for name, env := range map[string]map[string]string{
		"PORT":        {"PORT": "http"},
		"DB_IAM_AUTH": {"DB_IAM_AUTH": "true"},
		"DB_NAME":     {"DB_NAME": "messages"},
	} {
		err := checkServeEnv(func(k string) string { return env[k] })
		var ce *store.ConfigError
		if !errors.As(err, &ce) || ce.Var != name {
			t.Errorf("%v: got %T %v, want a *store.ConfigError naming %s", env, err, err, name)
		}
	}
}
