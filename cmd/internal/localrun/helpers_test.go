package localrun

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"testing"

	"example.com/pscmessages/store/localpg/localpgtest"
)

const serveArgsEnv = "PSCMESSAGES_TEST_SERVE_ARGS"

// TestServeProcess is not a test: it is the child process the tests start,
// running serve exactly as `go run ./cmd/pscmessages` does.
func TestServeProcess(t *testing.T) {
	args, ok := os.LookupEnv(serveArgsEnv)
	if !ok {
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// Stdin is a pipe the parent never writes to: EOF means the parent is
	// gone (a test binary killed by -timeout runs no cleanup), so shut down
	// rather than linger.
	ctx, orphaned := context.WithCancel(ctx)
	go func() {
		io.Copy(io.Discard, os.Stdin)
		orphaned()
	}()
	if err := runServe(ctx, strings.Fields(args), nil); err != nil {
		fmt.Fprintln(os.Stderr, "serve:", err)
		os.Exit(1)
	}
	os.Exit(0)
}

// psBuffer is an io.Writer safe for a child's output and a test's reads.
type psBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *psBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *psBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func psFreePort(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return fmt.Sprint(l.Addr().(*net.TCPAddr).Port)
}

func psTail(s string, n int) string {
	if len(s) > n {
		return "…" + s[len(s)-n:]
	}
	return s
}

// psQueryInt runs a query returning one integer, on the connection to url
// the test keeps (localpgtest.QueryInt).
func psQueryInt(t testing.TB, url, sql string, args ...any) int {
	t.Helper()
	n, err := localpgtest.QueryInt(t, url, sql, args...)
	if err != nil {
		t.Fatal(err)
	}
	return n
}
