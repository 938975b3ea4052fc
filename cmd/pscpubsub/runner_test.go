package main

// One way to start the local runner as a child of this test binary, for every
// test that needs a real process (its own environment, signals, exit codes):
// the child is TestPubSubServeProcess (runServe) or TestMainProcess (main),
// or a command built for the test (the pull ingester, see pscpull_test.go).

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// runnerOptions says which child to start and how.
type runnerOptions struct {
	// process is the test the child runs: "TestPubSubServeProcess" (runServe
	// with args through serveArgsEnv) when empty, or "TestMainProcess" (main,
	// through mainArgsEnv).
	process string
	// program, when set, is a built command the child runs instead of this
	// test binary, with args as its arguments; process is then unused.
	program string
	args    []string
	port    string            // PORT; a free port when empty
	host    string            // HOST; unset when empty
	env     map[string]string // set on top of the cleaned environment
	// unset is what else to leave out of this process's environment, besides
	// runnerUnset: names, or prefixes ending in "*".
	unset []string
	// lifetime, when set, kills the child that long after its start
	// whatever the test does.
	lifetime time.Duration
	// cleanExit: stop must see the child exit 0 (or the test fails).
	cleanExit bool
}

// runnerUnset is what every child starts without: what the tests set for it.
var runnerUnset = []string{"FUNCTION_TARGET", "DATABASE_URL", "PORT", "HOST", "DB_*"}

// runnerEnv is this process's environment without runnerUnset and unset.
func runnerEnv(unset ...string) []string {
	var env []string
	unset = slices.Concat(runnerUnset, unset)
next:
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		for _, u := range unset {
			if prefix, ok := strings.CutSuffix(u, "*"); ok && strings.HasPrefix(name, prefix) || name == u {
				continue next
			}
		}
		env = append(env, kv)
	}
	return env
}

// runner is a running child. Its stdout lines are scanned for what it
// prints about itself.
type runner struct {
	cmd            *exec.Cmd
	base           string // http://127.0.0.1:PORT
	stdout, stderr psBuffer
	stdin          io.WriteCloser // never written; its closing tells a runServe child we are gone
	ready          chan struct{}  // closed at the first "serving " line
	delivering     chan struct{}  // closed at the first "pubsub: delivering " line
	exited         chan struct{}  // closed once the child exited and its stdout is read
	cleanExit      bool
	stopped        bool

	// Read from stdout; safe to read once ready (or exited) is closed.
	pgPort   int    // "started local PostgreSQL on 127.0.0.1:PORT"
	psql     string // "connect with: psql ..."
	emulator string // "export PUBSUB_EMULATOR_HOST=ADDR", when it started pstest itself
}

var startedPG = regexp.MustCompile(`started local PostgreSQL on 127\.0\.0\.1:(\d+)`)

// startRunner starts a child and returns at once; wait on its channels. At
// the end of the test it is stopped (SIGTERM, killed after 60 s) unless it
// was already, and its output is logged if the test failed.
func startRunner(t testing.TB, o runnerOptions) *runner {
	t.Helper()
	if o.port == "" {
		o.port = psFreePort(t)
	}
	argsEnv, process := serveArgsEnv, "TestPubSubServeProcess"
	if o.process == "TestMainProcess" {
		argsEnv, process = mainArgsEnv, o.process
	} else if o.process != "" && o.process != process {
		t.Fatalf("startRunner: unknown process %q", o.process)
	}
	ctx, cancel := context.Background(), context.CancelFunc(func() {})
	if o.lifetime > 0 {
		ctx, cancel = context.WithTimeout(ctx, o.lifetime)
	}
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^"+process+"$")
	cmd.Env = append(runnerEnv(o.unset...), argsEnv+"="+strings.Join(o.args, " "), "PORT="+o.port)
	if o.program != "" {
		cmd = exec.CommandContext(ctx, o.program, o.args...)
		cmd.Env = append(runnerEnv(o.unset...), "PORT="+o.port)
	}
	if o.host != "" {
		cmd.Env = append(cmd.Env, "HOST="+o.host)
	}
	for k, v := range o.env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	r := &runner{cmd: cmd, base: "http://127.0.0.1:" + o.port, cleanExit: o.cleanExit,
		ready: make(chan struct{}), delivering: make(chan struct{}), exited: make(chan struct{})}
	pipe, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = &r.stderr
	if r.stdin, err = cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	go func() {
		defer cancel()
		var serving, delivering sync.Once
		sc := bufio.NewScanner(pipe)
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			line := sc.Text()
			fmt.Fprintln(&r.stdout, line)
			if m := startedPG.FindStringSubmatch(line); m != nil {
				r.pgPort, _ = strconv.Atoi(m[1])
			}
			if cmdline, ok := strings.CutPrefix(line, "connect with: "); ok {
				r.psql = cmdline
			}
			if addr, ok := strings.CutPrefix(strings.TrimSpace(line), "export PUBSUB_EMULATOR_HOST="); ok {
				r.emulator = addr
			}
			if strings.HasPrefix(line, "serving ") {
				serving.Do(func() { close(r.ready) })
			}
			if strings.HasPrefix(line, "pubsub: delivering ") {
				delivering.Do(func() { close(r.delivering) })
			}
		}
		io.Copy(io.Discard, pipe)
		cmd.Wait()
		close(r.exited)
	}()
	t.Cleanup(func() {
		r.stop(t)
		if t.Failed() {
			t.Logf("runner %d stdout (tail):\n%s\nstderr (tail):\n%s", cmd.Process.Pid, psTail(r.stdout.String(), 3000), psTail(r.stderr.String(), 3000))
		}
	})
	return r
}

// running says whether the child has not exited.
func (r *runner) running() bool {
	select {
	case <-r.exited:
		return false
	default:
		return true
	}
}

// stop sends SIGTERM, as Ctrl-C or Cloud Run would, and waits for the exit.
func (r *runner) stop(t testing.TB) {
	t.Helper()
	r.stopWith(t, syscall.SIGTERM)
}

// stopWith sends sig (unless the child was stopped before) and waits for the
// exit; a child still running 60 s later is killed and the test fails.
func (r *runner) stopWith(t testing.TB, sig syscall.Signal) {
	t.Helper()
	if r.stopped {
		return
	}
	r.stopped = true
	if r.running() {
		r.cmd.Process.Signal(sig)
	}
	select {
	case <-r.exited:
		if r.cleanExit && !r.cmd.ProcessState.Success() {
			t.Errorf("runner exited with %v", r.cmd.ProcessState)
		}
	case <-time.After(60 * time.Second):
		r.cmd.Process.Kill()
		<-r.exited
		t.Errorf("runner did not stop within 60 s of %v", sig)
	}
}
