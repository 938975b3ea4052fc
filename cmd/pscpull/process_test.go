package main

// The ingester as a child process of this test binary, re-executed into
// TestMainProcess: a process of its own gives it its own environment, and
// SIGTERM and its exit code are the real ones.

import (
	"bytes"
	"context"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

const mainArgsEnv = "PSCPULL_TEST_MAIN_ARGS"

// TestMainProcess is not a test: it is the child process that runs main with
// the arguments in PSCPULL_TEST_MAIN_ARGS, as `go run ./cmd/pscpull ARGS` would.
func TestMainProcess(t *testing.T) {
	args, ok := os.LookupEnv(mainArgsEnv)
	if !ok {
		return
	}
	os.Args = append([]string{"pscpull"}, strings.Fields(args)...)
	main()
	os.Exit(0)
}

// childUnset is what the child starts without, besides what the test sets:
// every setting the ingester reads (names, or prefixes ending in "_").
var childUnset = []string{"FUNCTION_TARGET", "DATABASE_URL", "PORT", "HOST", "GOOGLE_CLOUD_PROJECT", "DB_", "PUBSUB_", "LOG_", "MAX_"}

// child is a running ingester.
type child struct {
	cmd    *exec.Cmd
	port   string
	stderr syncBuffer
	exited chan struct{}
	done   bool
}

// startChild starts the ingester with args, env on top of a cleaned
// environment and PORT a free port. At the end of the test it is stopped
// unless it was already, and its log shown if the test failed.
func startChild(t *testing.T, env map[string]string, args ...string) *child {
	t.Helper()
	c := &child{port: freePort(t), exited: make(chan struct{})}
	c.cmd = exec.Command(os.Args[0], "-test.run=^TestMainProcess$")
next:
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		for _, u := range childUnset {
			if name == u || strings.HasSuffix(u, "_") && strings.HasPrefix(name, u) {
				continue next
			}
		}
		c.cmd.Env = append(c.cmd.Env, kv)
	}
	c.cmd.Env = append(c.cmd.Env, mainArgsEnv+"="+strings.Join(args, " "), "PORT="+c.port)
	for k, v := range env {
		c.cmd.Env = append(c.cmd.Env, k+"="+v)
	}
	c.cmd.Stdout, c.cmd.Stderr = &c.stderr, &c.stderr
	if err := c.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		c.cmd.Wait()
		close(c.exited)
	}()
	t.Cleanup(func() {
		c.stop(t)
		if t.Failed() {
			t.Logf("ingester output:\n%s", c.stderr.String())
		}
	})
	return c
}

// stop sends SIGTERM, as Cloud Run does, and fails the test unless the child
// exits 0 within 60 s.
func (c *child) stop(t *testing.T) {
	t.Helper()
	if c.done {
		return
	}
	c.done = true
	c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.exited:
		if !c.cmd.ProcessState.Success() {
			t.Errorf("the ingester exited with %v", c.cmd.ProcessState)
		}
	case <-time.After(60 * time.Second):
		c.cmd.Process.Kill()
		<-c.exited
		t.Errorf("the ingester did not stop within 60 s of SIGTERM")
	}
}

// syncBuffer is a bytes.Buffer the child's output goroutines and the test
// share.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// freePort is a loopback port nothing listens on right now.
func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
}

// waitFor polls cond until it holds, or fails the test after timeout.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		case <-time.After(20 * time.Millisecond):
		}
	}
}
