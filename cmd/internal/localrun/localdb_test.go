package localrun

// The local runner's own PostgreSQL: password-protected, with a psql line that
// works, and never taken from a live runner. Each runner is this test binary
// re-executed into TestServeProcess, running runServe as main does.

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// runLocal starts a runner on the data folder dir with extra env and waits
// until it serves or exits.
func runLocal(t *testing.T, dir string, env map[string]string, args ...string) *runner {
	t.Helper()
	all := map[string]string{"LOCAL_PGDATA": dir}
	for k, v := range env {
		all[k] = v
	}
	r := startRunner(t, runnerOptions{args: args, host: "127.0.0.1", env: all, unset: []string{"PG*", "LOCAL_PGDATA"}})
	select {
	case <-r.ready:
	case <-r.exited:
	case <-time.After(90 * time.Second):
		t.Fatalf("runner neither served nor exited in 90 s:\n%s\n%s", r.stdout.String(), r.stderr.String())
	}
	return r
}

// localDataDir is a data folder the server user can reach when we are root.
func localDataDir(t *testing.T) string {
	t.Helper()
	parent, err := os.MkdirTemp("", "h9-runner-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(parent) })
	if err := os.Chmod(parent, 0o755); err != nil {
		t.Fatal(err)
	}
	return filepath.Join(parent, "pgdata")
}

func TestLocalRunnerDatabaseNeedsItsPassword(t *testing.T) {
	dir := localDataDir(t)
	r := runLocal(t, dir, nil)
	if !r.running() || r.pgPort == 0 {
		t.Fatalf("runner did not start:\n%s\n%s", r.stdout.String(), r.stderr.String())
	}

	// The password file: ours, and readable by nobody else.
	pass := filepath.Join(dir, localPasswordFile)
	fi, err := os.Stat(pass)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 || int(fi.Sys().(*syscall.Stat_t).Uid) != os.Getuid() {
		t.Fatalf("%s: mode %v uid %d; want 0600 and ours (%d)", pass, fi.Mode().Perm(), fi.Sys().(*syscall.Stat_t).Uid, os.Getuid())
	}

	// Without the password nobody gets in, whatever user they are.
	ctx := context.Background()
	cc, err := pgx.ParseConfig(fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable&passfile=%s", r.pgPort, os.DevNull))
	if err != nil {
		t.Fatal(err)
	}
	if conn, err := pgx.ConnectConfig(ctx, cc); err == nil {
		conn.Close(ctx)
		t.Fatal("logged in as postgres without a password")
	}

	// The printed psql command works as it is.
	if r.psql == "" || !strings.HasPrefix(r.psql, "psql ") {
		t.Fatalf("no psql line in:\n%s", r.stdout.String())
	}
	sh := exec.Command("sh", "-c", r.psql+" -w -XAtc 'SELECT current_user'")
	sh.Env = append(os.Environ(), "PGPASSFILE="+os.DevNull) // only the printed passfile may help
	out, err := sh.CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "postgres" {
		t.Fatalf("%s: %v: %s", r.psql, err, out)
	}
	// And so does what the function uses.
	resp, err := http.Get(r.base + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("GET /: %d", resp.StatusCode)
	}
}

func TestSecondRunnerLeavesALiveRunnersDatabaseAlone(t *testing.T) {
	dir := localDataDir(t)
	first := runLocal(t, dir, nil)
	if !first.running() {
		t.Fatalf("first runner did not start:\n%s", first.stderr.String())
	}
	post(t, first.base, "kept")

	for _, tc := range []struct {
		name string
		env  map[string]string
		args []string
		want []string // what the refusal names; the first runner's PID and port by default
	}{
		// Refused before it looks at the folder at all.
		{name: "bad configuration", env: map[string]string{"MAX_CONTENT_BYTES": "bogus"}, want: []string{"MAX_CONTENT_BYTES"}},
		{name: "good configuration"},
		{name: "fresh", args: []string{"-fresh"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			second := runLocal(t, dir, tc.env, tc.args...)
			select {
			case <-second.exited:
			case <-time.After(30 * time.Second):
				t.Fatalf("the second runner is running on the first one's folder:\n%s", second.stdout.String())
			}
			if second.cmd.ProcessState.Success() {
				t.Fatalf("the second runner ran:\n%s", second.stdout.String())
			}
			msg := second.stderr.String()
			if tc.want == nil {
				tc.want = []string{fmt.Sprintf("PID %d", first.cmd.Process.Pid), fmt.Sprintf("127.0.0.1:%d", first.pgPort)}
			}
			for _, want := range tc.want {
				if !strings.Contains(msg, want) {
					t.Errorf("the refusal does not name %q:\n%s", want, msg)
				}
			}
			// The first runner still has its database and its data.
			if got := getRoot(t, first.base); !strings.Contains(got, "kept") {
				t.Fatalf("after the second runner, the first answers %s", got)
			}
		})
	}

	// A runner that died without cleaning up leaves its server running; the
	// next one takes the folder over, data included.
	first.stopWith(t, syscall.SIGKILL)
	next := runLocal(t, dir, nil)
	if !next.running() {
		t.Fatalf("a runner after a crashed one did not start:\n%s", next.stderr.String())
	}
	if got := getRoot(t, next.base); !strings.Contains(got, "kept") {
		t.Fatalf("after taking over: %s", got)
	}
}

func post(t *testing.T, base, content string) {
	t.Helper()
	resp, err := http.Post(base+"/", "application/json", strings.NewReader(fmt.Sprintf(`{"content":%q}`, content)))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("POST: %d %s", resp.StatusCode, b)
	}
}

func getRoot(t *testing.T, base string) string {
	t.Helper()
	resp, err := http.Get(base + "/")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return fmt.Sprintf("%d %s", resp.StatusCode, b)
}
