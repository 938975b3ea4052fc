package localrun

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The child is TestMainProcess (startup_test.go): main itself, signal
// handling included.

// TestSecondInterruptStopsAtOnce: the first SIGINT starts a drain that waits
// for a request held in flight (up to 40 s); a second SIGINT must stop the
// process at once by the signal's default action, not be swallowed by
// signal.NotifyContext until main returns.
func TestSecondInterruptStopsAtOnce(t *testing.T) {
	db, name := sharedDatabase(t, "sigint")
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := fmt.Sprint(l.Addr().(*net.TCPAddr).Port)
	l.Close()

	r := startRunner(t, runnerOptions{process: "TestMainProcess", args: []string{"serve"}, port: port,
		host: "127.0.0.1", env: map[string]string{"DATABASE_URL": db.SuperuserURL(name)}, unset: []string{"PUBSUB_*"}})
	cmd, exited := r.cmd, r.exited
	base := "http://127.0.0.1:" + port
	waitUntil(t, exited, "the server to answer", func() bool {
		resp, err := http.Get(base + "/messages")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return true
	})

	// A request whose body never finishes: its handler is running, so the
	// drain waits for it.
	pr, pw := io.Pipe()
	defer pw.Close()
	req, _ := http.NewRequest("POST", base+"/messages", pr)
	req.ContentLength = 100
	req.Header.Set("Content-Type", "application/json")
	go func() {
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
		}
	}()
	pw.Write([]byte(`{"content": "held`))
	time.Sleep(300 * time.Millisecond) // let the server read the headers; not a timing assertion

	cmd.Process.Signal(syscall.SIGINT)
	// The listener closes once the first signal is handled.
	waitUntil(t, exited, "the listener to close after the first SIGINT", func() bool {
		c, err := net.Dial("tcp", "127.0.0.1:"+port)
		if err != nil {
			return true
		}
		c.Close()
		return false
	})
	// The second SIGINT. Sent again every second in case it raced the
	// handler of the first; were they swallowed, the process would exit by
	// itself after the 40 s drain, not by SIGINT.
	deadline := time.After(60 * time.Second)
	for {
		cmd.Process.Signal(syscall.SIGINT)
		select {
		case <-exited:
			ws, _ := cmd.ProcessState.Sys().(syscall.WaitStatus)
			if !ws.Signaled() || ws.Signal() != syscall.SIGINT {
				t.Fatalf("the process ended with %v, not by the second SIGINT: the drain was not cut short", cmd.ProcessState)
			}
			return
		case <-deadline:
			t.Fatal("the process still runs 60 s after a second SIGINT")
		case <-time.After(time.Second):
		}
	}
}

// waitUntil polls cond for up to 60 s, failing if the child exits first.
func waitUntil(t *testing.T, exited <-chan struct{}, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !cond() {
		select {
		case <-exited:
			t.Fatalf("the child exited while waiting for %s", what)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %s in 60 s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestSecondInterruptStopsTheLocalPostgres: a second SIGINT ends the runner
// at once, and takes its local PostgreSQL with it. The server runs in a
// session of its own, so the terminal's Ctrl-C never reaches it: a runner
// that just died of the second signal would leave the server running,
// unsaid.
func TestSecondInterruptStopsTheLocalPostgres(t *testing.T) {
	dir := localDataDir(t)
	t.Cleanup(func() { stopLeftServer(t, dir) })
	r := startRunner(t, runnerOptions{process: "TestMainProcess", args: []string{"serve"},
		host: "127.0.0.1", env: map[string]string{"LOCAL_PGDATA": dir}, unset: []string{"PUBSUB_*", "PG*", "LOCAL_PGDATA"}})
	select {
	case <-r.ready:
	case <-r.exited:
		t.Fatal("the runner exited before serving")
	case <-time.After(90 * time.Second):
		t.Fatal("the runner did not serve in 90 s")
	}
	if r.pgPort == 0 {
		t.Fatal("the runner did not say where its PostgreSQL listens")
	}
	pgAddr := fmt.Sprintf("127.0.0.1:%d", r.pgPort)

	// A request whose body never finishes holds the drain.
	pr, pw := io.Pipe()
	defer pw.Close()
	req, _ := http.NewRequest("POST", r.base+"/messages", pr)
	req.ContentLength = 100
	req.Header.Set("Content-Type", "application/json")
	go func() {
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
		}
	}()
	pw.Write([]byte(`{"content": "held`))
	time.Sleep(300 * time.Millisecond) // let the server read the headers; not a timing assertion

	r.cmd.Process.Signal(syscall.SIGINT)
	waitUntil(t, r.exited, "the listener to close after the first SIGINT", func() bool {
		c, err := net.Dial("tcp", strings.TrimPrefix(r.base, "http://"))
		if err != nil {
			return true
		}
		c.Close()
		return false
	})
	r.stopped = true // this test sends the signals
	deadline := time.After(60 * time.Second)
	for r.running() {
		r.cmd.Process.Signal(syscall.SIGINT)
		select {
		case <-r.exited:
		case <-deadline:
			t.Fatal("the runner still runs 60 s after a second SIGINT")
		case <-time.After(time.Second):
		}
	}
	ws, _ := r.cmd.ProcessState.Sys().(syscall.WaitStatus)
	if !ws.Signaled() || ws.Signal() != syscall.SIGINT {
		t.Fatalf("the runner ended with %v, not by the second SIGINT", r.cmd.ProcessState)
	}
	if c, err := net.DialTimeout("tcp", pgAddr, time.Second); err == nil {
		c.Close()
		t.Fatalf("the local PostgreSQL still accepts connections on %s after the runner ended", pgAddr)
	}
	if !strings.Contains(r.stderr.String(), "stopped the local PostgreSQL at once") {
		t.Errorf("the runner did not say it stopped its PostgreSQL:\n%s", r.stderr.String())
	}
}

// stopLeftServer stops a postmaster left running in dir, as a test's
// cleanup: SIGQUIT is PostgreSQL's immediate shutdown.
func stopLeftServer(t *testing.T, dir string) {
	b, err := os.ReadFile(filepath.Join(dir, "postmaster.pid"))
	if err != nil {
		return
	}
	line, _, _ := strings.Cut(string(b), "\n")
	if pid, err := strconv.Atoi(strings.TrimSpace(line)); err == nil && pid > 0 {
		syscall.Kill(pid, syscall.SIGQUIT)
		time.Sleep(time.Second)
	}
}
