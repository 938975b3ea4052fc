package main

import (
	"bufio"
	"context"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestNoGoogleCredentialsIsPermanent: IAM mode (DB_HOST without DB_PASSWORD)
// on a machine with no Google credentials answers 500, not 503 "retry
// later", and logs once what to do, naming the password alternatives.
func TestNoGoogleCredentialsIsPermanent(t *testing.T) {
	home := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestMainProcess$")
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		switch {
		case name == "FUNCTION_TARGET", name == "DATABASE_URL", name == "PORT", name == "HOST", name == "HOME",
			name == "CLOUDSDK_CONFIG", name == "GCE_METADATA_HOST", name == "LOG_FORMAT", name == "LOG_LEVEL",
			strings.HasPrefix(name, "GOOGLE_"), strings.HasPrefix(name, "PUBSUB_"), strings.HasPrefix(name, "DB_"):
			continue
		}
		cmd.Env = append(cmd.Env, kv)
	}
	port := psFreePort(t)
	cmd.Env = append(cmd.Env, mainArgsEnv+"=serve", "HOME="+home, "CLOUDSDK_CONFIG="+home, "PORT="+port,
		"DB_HOST=127.0.0.1", "DB_NAME=messages", "DB_SSLMODE=require")
	var stderr psBuffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var stdout psBuffer
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			stdout.Write([]byte(sc.Text() + "\n"))
			if strings.HasPrefix(sc.Text(), "serving ") {
				close(ready)
			}
		}
		io.Copy(io.Discard, out)
	}()
	defer func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
	}()
	select {
	case <-ready:
	case <-time.After(30 * time.Second):
		t.Fatalf("not serving after 30 s:\n%s\n%s", stdout.String(), stderr.String())
	}
	for i := range 4 {
		resp, err := http.Post("http://127.0.0.1:"+port+"/", "application/json", strings.NewReader(`{"content":"x"}`))
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 500 || resp.Header.Get("Retry-After") != "" {
			t.Fatalf("POST %d: %d %s (Retry-After %q), want 500", i, resp.StatusCode, body, resp.Header.Get("Retry-After"))
		}
		time.Sleep(300 * time.Millisecond)
	}
	logs := stdout.String() + stderr.String()
	if n := strings.Count(logs, "no Google default credentials were found"); n != 1 {
		t.Fatalf("the cause was logged %d times, want once:\n%s", n, logs)
	}
	for _, want := range []string{"gcloud auth application-default login", "DB_PASSWORD", "DB_IAM_AUTH=false"} {
		if !strings.Contains(logs, want) {
			t.Fatalf("the log does not mention %q:\n%s", want, logs)
		}
	}
}
