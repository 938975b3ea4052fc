package function

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"
)

// sigtermChildEnv makes the test binary a function instance that exports to
// the test's receiver, ends one span and waits for SIGTERM (see sigtermChild).
const sigtermChildEnv = "PSCMESSAGES_TEST_SIGTERM_CHILD"

const sigtermProbeSpan = "sigterm flush probe"

// Cloud Run sends SIGTERM and kills the instance 10 s later: a span still
// buffered then (the batch processor exports every few seconds) must reach
// the receiver before the process exits, and the process must still exit.
func TestSIGTERMFlushesPendingSpans(t *testing.T) {
	got := make(chan time.Time, 1)
	receiver := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if r.URL.Path == "/v1/traces" && bytes.Contains(body, []byte(sigtermProbeSpan)) {
			select {
			case got <- time.Now():
			default:
			}
		}
	}))
	defer receiver.Close()

	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(),
		sigtermChildEnv+"=1",
		"K_SERVICE=sigterm-test", // as on Cloud Run, where the function handles SIGTERM itself
		"OTEL_EXPORTER_OTLP_ENDPOINT="+receiver.URL,
		"OTEL_BSP_SCHEDULE_DELAY=600000", // nothing is exported but by the flush
		"OTEL_METRIC_EXPORT_INTERVAL=600000",
	)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	ready := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if sc.Text() == "ready" {
				ready <- true
			}
		}
		exited <- cmd.Wait()
	}()
	select {
	case <-ready:
	case err := <-exited:
		t.Fatalf("the instance exited before its span ended: %v\n%s", err, stderr.String())
	case <-time.After(30 * time.Second):
		_ = cmd.Process.Kill()
		t.Fatalf("the instance did not end its span within 30 s\n%s", stderr.String())
	}
	select {
	case <-got:
		t.Fatal("the span was exported before SIGTERM: the test proves nothing")
	default:
	}
	sent := time.Now()
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	var waitErr error
	select {
	case waitErr = <-exited:
	case <-time.After(10 * time.Second):
		_ = cmd.Process.Kill()
		t.Fatalf("the instance was still running 10 s after SIGTERM, when Cloud Run kills it\n%s", stderr.String())
	}
	select {
	case at := <-got:
		t.Logf("span received %v after SIGTERM", at.Sub(sent).Round(time.Millisecond))
	default:
		t.Fatalf("the instance exited (%v) without exporting its pending span\n%s", waitErr, stderr.String())
	}
	ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus)
	if !ok || !ws.Signaled() || ws.Signal() != syscall.SIGTERM {
		t.Errorf("the instance ended with %v, want SIGTERM's own exit", cmd.ProcessState)
	}
}

// sigtermChild is the instance of TestSIGTERMFlushesPendingSpans: the
// package's init has set up telemetry from the environment and armed the
// SIGTERM flush, as in a deployed function.
func sigtermChild() int {
	if tel == nil {
		fmt.Fprintln(os.Stderr, "telemetry is off:", telErr)
		return 2
	}
	_, span := tel.Tracer.Start(context.Background(), sigtermProbeSpan)
	span.End()
	fmt.Println("ready")
	select {} // until SIGTERM, whose handler flushes and exits
}
