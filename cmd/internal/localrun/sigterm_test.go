package localrun

import (
	"io"
	"net"
	"net/http"
	"syscall"
	"testing"
	"time"
)

// TestSIGTERMDrainsAndExitsZero: SIGTERM, which Cloud Run and most process
// managers send, is what main handles as a drain: the listener closes at
// once, a request already in flight is still answered and stored, and the
// process exits 0. The child is TestMainProcess (startup_test.go), main with
// its own signal handling, not a test's stand-in. Killed by the signal's
// default action, the request would be cut; ignoring it, the listener would
// stay open: either fails here within seconds.
func TestSIGTERMDrainsAndExitsZero(t *testing.T) {
	db, name := sharedDatabase(t, "sigterm")
	url := db.SuperuserURL(name)
	port := psFreePort(t)
	r := startRunner(t, runnerOptions{process: "TestMainProcess", args: []string{"serve"}, port: port,
		host: "127.0.0.1", env: map[string]string{"DATABASE_URL": url}, unset: []string{"PUBSUB_*"}, lifetime: 2 * time.Minute})
	t.Cleanup(func() {
		// A runner that ignores SIGTERM would hold the test's end for the
		// stop's full wait: a failed test kills it at once.
		if t.Failed() && r.running() {
			r.cmd.Process.Kill()
		}
	})
	select {
	case <-r.ready:
	case <-r.exited:
		t.Fatalf("the runner exited before serving: %v", r.cmd.ProcessState)
	case <-time.After(60 * time.Second):
		t.Fatal("the runner did not start serving in 60 s")
	}

	// A request whose body is finished only after SIGTERM: its handler is
	// running when the signal arrives, so the drain must wait for it.
	const body = `{"content": "in flight at SIGTERM"}`
	pr, pw := io.Pipe()
	defer pw.Close()
	req, _ := http.NewRequest("POST", r.base+"/messages", pr)
	req.ContentLength = int64(len(body))
	req.Header.Set("Content-Type", "application/json")
	answered := make(chan int, 1)
	go func() {
		client := &http.Client{Timeout: 30 * time.Second}
		resp, err := client.Do(req)
		if err != nil {
			t.Logf("in-flight request: %v", err)
			answered <- 0
			return
		}
		resp.Body.Close()
		answered <- resp.StatusCode
	}()
	pw.Write([]byte(body[:5]))
	time.Sleep(300 * time.Millisecond) // let the server read the headers; not a timing assertion

	if err := r.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	closed := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", "127.0.0.1:"+port, time.Second)
		if err != nil {
			break
		}
		c.Close()
		select {
		case <-r.exited:
			t.Fatalf("the runner ended with %v at SIGTERM, with a request in flight", r.cmd.ProcessState)
		default:
		}
		if time.Now().After(closed) {
			t.Fatal("the listener still accepts connections 10 s after SIGTERM: SIGTERM was not handled")
		}
		time.Sleep(50 * time.Millisecond)
	}
	select {
	case <-r.exited:
		t.Fatalf("the runner ended with %v at SIGTERM, before the request in flight was answered", r.cmd.ProcessState)
	default:
	}
	pw.Write([]byte(body[5:]))
	pw.Close()
	select {
	case status := <-answered:
		if status != http.StatusCreated {
			t.Fatalf("the request in flight at SIGTERM was answered %d, want 201", status)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the request in flight at SIGTERM was not answered in 20 s")
	}
	select {
	case <-r.exited:
	case <-time.After(20 * time.Second):
		t.Fatal("the runner still runs 20 s after SIGTERM with nothing in flight")
	}
	if !r.cmd.ProcessState.Success() {
		t.Fatalf("the runner exited with %v after SIGTERM, want 0", r.cmd.ProcessState)
	}
	if n := psQueryInt(t, url, "SELECT count(*) FROM messages WHERE content = 'in flight at SIGTERM'"); n != 1 {
		t.Fatalf("%d rows of the request in flight at SIGTERM, want 1", n)
	}
}
