package main

// The local runner's own PostgreSQL: password-protected, with a psql line that
// works, and never taken from a live runner. Each runner is this test binary
// re-executed into TestLocalRunnerProcess, running runServe as main does.

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

const localRunnerEnv = "PSCMESSAGES_TEST_LOCAL_RUNNER"

// TestLocalRunnerProcess is not a test: it is the runner child process.
func TestLocalRunnerProcess(t *testing.T) {
	args, ok := os.LookupEnv(localRunnerEnv)
	if !ok {
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, orphaned := context.WithCancel(ctx)
	go func() { // stdin closes when the parent test is gone
		io.Copy(io.Discard, os.Stdin)
		orphaned()
	}()
	if err := runServe(ctx, strings.Fields(args)); err != nil {
		fmt.Fprintln(os.Stderr, "serve:", err)
		os.Exit(1)
	}
	os.Exit(0)
}

// localRunner is a running `go run ./cmd` child.
type localRunner struct {
	cmd            *exec.Cmd
	base           string // http://127.0.0.1:PORT
	pgPort         int
	psql           string // the command it printed
	stdout, stderr psBuffer
	stdin          io.WriteCloser
	exited         chan struct{}
}

var startedPG = regexp.MustCompile(`started local PostgreSQL on 127\.0\.0\.1:(\d+)`)

// runLocal starts a runner on the data folder dir with extra env and waits
// until it serves or exits; wait=false returns at once.
func runLocal(t *testing.T, dir string, env map[string]string, args ...string) *localRunner {
	t.Helper()
	port := psFreePort(t)
	cmd := exec.Command(os.Args[0], "-test.run=^TestLocalRunnerProcess$")
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		if name == "FUNCTION_TARGET" || name == "DATABASE_URL" || name == "PORT" || name == "HOST" ||
			strings.HasPrefix(name, "DB_") || strings.HasPrefix(name, "PG") || name == "LOCAL_PGDATA" {
			continue
		}
		cmd.Env = append(cmd.Env, kv)
	}
	cmd.Env = append(cmd.Env, localRunnerEnv+"="+strings.Join(args, " "), "HOST=127.0.0.1", "PORT="+port, "LOCAL_PGDATA="+dir)
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	r := &localRunner{cmd: cmd, base: "http://127.0.0.1:" + port, exited: make(chan struct{})}
	pipe, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = &r.stderr
	if r.stdin, err = cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(pipe)
		for sc.Scan() {
			line := sc.Text()
			fmt.Fprintln(&r.stdout, line)
			if m := startedPG.FindStringSubmatch(line); m != nil {
				r.pgPort, _ = strconv.Atoi(m[1])
			}
			if cmdline, ok := strings.CutPrefix(line, "connect with: "); ok {
				r.psql = cmdline
			}
			if strings.HasPrefix(line, "serving ") {
				close(ready)
			}
		}
		io.Copy(io.Discard, pipe)
		cmd.Wait()
		close(r.exited)
	}()
	t.Cleanup(func() {
		r.stop(t, syscall.SIGTERM)
		if t.Failed() {
			t.Logf("runner %d stdout:\n%s\nstderr:\n%s", cmd.Process.Pid, r.stdout.String(), psTail(r.stderr.String(), 3000))
		}
	})
	select {
	case <-ready:
	case <-r.exited:
	case <-time.After(90 * time.Second):
		t.Fatalf("runner neither served nor exited in 90 s:\n%s\n%s", r.stdout.String(), r.stderr.String())
	}
	return r
}

func (r *localRunner) serving() bool {
	select {
	case <-r.exited:
		return false
	default:
		return true
	}
}

func (r *localRunner) stop(t *testing.T, sig syscall.Signal) {
	t.Helper()
	select {
	case <-r.exited:
		return
	default:
	}
	r.cmd.Process.Signal(sig)
	select {
	case <-r.exited:
	case <-time.After(60 * time.Second):
		r.cmd.Process.Kill()
		<-r.exited
		t.Errorf("runner did not stop within 60 s of %v", sig)
	}
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
	if !r.serving() || r.pgPort == 0 {
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
	if !first.serving() {
		t.Fatalf("first runner did not start:\n%s", first.stderr.String())
	}
	post(t, first.base, "kept")

	for _, tc := range []struct {
		name string
		env  map[string]string
		args []string
	}{
		{name: "bad configuration", env: map[string]string{"MAX_CONTENT_BYTES": "bogus"}},
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
			for _, want := range []string{fmt.Sprintf("PID %d", first.cmd.Process.Pid), fmt.Sprintf("127.0.0.1:%d", first.pgPort)} {
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
	first.stop(t, syscall.SIGKILL)
	next := runLocal(t, dir, nil)
	if !next.serving() {
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
