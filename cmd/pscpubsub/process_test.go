package main

// The child processes of this package's tests: main as `go run ./cmd/pscpubsub`
// runs it, and serve with its Pub/Sub side (TestPubSubServeProcess). A test
// binary can only start itself, so cmd/internal/localrun's tests have their own.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

const mainArgsEnv = "PSCPUBSUB_TEST_MAIN_ARGS"

// TestMainProcess is not a test: it is the child process that runs main with
// the arguments in PSCPUBSUB_TEST_MAIN_ARGS, as `go run ./cmd/pscpubsub ARGS` would.
func TestMainProcess(t *testing.T) {
	args, ok := os.LookupEnv(mainArgsEnv)
	if !ok {
		return
	}
	os.Args = append([]string{"pscpubsub"}, strings.Fields(args)...)
	main()
	os.Exit(0)
}

// runMain runs `go run ./cmd/pscpubsub ARGS` (main, in a child process) with env on top
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
		t.Fatalf("go run ./cmd/pscpubsub %s did not stop within 30 s\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), out.String(), errb.String())
	}
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		code = exit.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return out.String(), errb.String(), code
}

// takenPort holds a loopback port that accepts connections, as whatever
// holds a port would, until the test ends.
func takenPort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	return fmt.Sprint(l.Addr().(*net.TCPAddr).Port)
}
