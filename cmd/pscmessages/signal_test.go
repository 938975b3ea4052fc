package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"syscall"
	"testing"
	"time"

	"example.com/pscmessages/store/localpg"
)

// The child is TestMainProcess (startup_test.go): main itself, signal
// handling included.

// TestSecondInterruptStopsAtOnce: the first SIGINT starts a drain that waits
// for a request held in flight (up to 40 s); a second SIGINT must stop the
// process at once by the signal's default action. It used to be swallowed
// by signal.NotifyContext until main returned.
func TestSecondInterruptStopsAtOnce(t *testing.T) {
	db := localpg.ForTest(t, localpg.Options{})
	if err := db.CreateDatabase(context.Background(), "sigint"); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := fmt.Sprint(l.Addr().(*net.TCPAddr).Port)
	l.Close()

	r := startRunner(t, runnerOptions{process: "TestMainProcess", args: []string{"serve", "-pubsub=false"}, port: port,
		host: "127.0.0.1", env: map[string]string{"DATABASE_URL": db.SuperuserURL("sigint")}, unset: []string{"PUBSUB_*"}})
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
	// handler of the first; on the old code none of them does anything and
	// the process exits by itself after the 40 s drain, not by SIGINT.
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
