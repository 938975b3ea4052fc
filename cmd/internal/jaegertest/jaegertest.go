// Package jaegertest starts Jaeger, the trace backend the end-to-end tests
// and the tracing benchmark export OTLP to. Only tests import it: it links
// package testing.
package jaegertest

import (
	"bytes"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// binaryDefault is where .ci/tools builds Jaeger (v1.75.0, in a module of
// its own); JAEGER_BIN names another.
const binaryDefault = "/root/.cache/jaeger-v1.75.0/jaeger"

// Jaeger's all-in-one ports: OTLP/HTTP and the query API (and UI).
const (
	OTLP  = "http://127.0.0.1:4318"
	Query = "http://127.0.0.1:16686"
)

// Binary is the Jaeger executable, failing the test when it is missing.
func Binary(t testing.TB) string {
	t.Helper()
	bin := os.Getenv("JAEGER_BIN")
	if bin == "" {
		bin = binaryDefault
	}
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("Jaeger is not installed at %s (set JAEGER_BIN, or build it: see the Jaeger block of .ci/tools): %v", bin, err)
	}
	return bin
}

// Start runs Jaeger with its in-memory store and waits for its API; the
// test's cleanup stops it.
func Start(t testing.TB) {
	t.Helper()
	if resp, err := http.Get(Query + "/api/services"); err == nil {
		resp.Body.Close()
		t.Fatalf("something already answers at %s; stop it (these tests start their own Jaeger)", Query)
	}
	cmd := exec.Command(Binary(t), uiArgs(t)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	var out buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
		cmd.Wait()
		if t.Failed() {
			t.Logf("jaeger output (tail):\n%s", out.tail(3000))
		}
	})
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := http.Get(Query + "/api/services")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("Jaeger did not answer at %s within 60 s: %v\n%s", Query, err, out.tail(3000))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// uiArgs serves the Jaeger UI built from jaeger-ui's sources, when
// JAEGER_UI names the build folder: the binary built from the Go module
// alone serves a placeholder page. Jaeger's own all-in-one configuration
// (from the module) with the assets path laid over it.
func uiArgs(t testing.TB) []string {
	t.Helper()
	ui := os.Getenv("JAEGER_UI")
	if ui == "" {
		return nil
	}
	modcache, err := exec.Command("go", "env", "GOMODCACHE").Output()
	if err != nil {
		t.Fatal(err)
	}
	allInOne := filepath.Join(strings.TrimSpace(string(modcache)), "github.com/jaegertracing/jaeger@v1.75.0/cmd/jaeger/internal/all-in-one.yaml")
	if _, err := os.Stat(allInOne); err != nil {
		t.Fatalf("JAEGER_UI needs Jaeger's all-in-one configuration from its module (go mod download github.com/jaegertracing/jaeger@v1.75.0): %v", err)
	}
	override := filepath.Join(t.TempDir(), "ui.yaml")
	if err := os.WriteFile(override, []byte("extensions:\n  jaeger_query:\n    ui:\n      assets_path: "+ui+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return []string{"--config=" + allInOne, "--config=" + override}
}

// buffer collects Jaeger's output for the failure log.
type buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *buffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *buffer) tail(n int) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	b := s.b.Bytes()
	return string(b[max(0, len(b)-n):])
}
