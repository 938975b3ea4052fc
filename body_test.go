package function

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"testing"
	"time"
)

// holdRequest starts a request on its own connection: its headers declare a
// body of declared bytes, of which only first is sent. The caller sends the
// rest (or not) and reads the answer with readAnswer.
func holdRequest(t *testing.T, base, path string, header map[string]string, declared int, first string) net.Conn {
	t.Helper()
	u, err := url.Parse(base)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := net.Dial("tcp", u.Host)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	var b strings.Builder
	fmt.Fprintf(&b, "POST %s HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\n", path, u.Host, declared)
	for k, v := range header {
		fmt.Fprintf(&b, "%s: %s\r\n", k, v)
	}
	b.WriteString("\r\n" + first)
	if _, err := conn.Write([]byte(b.String())); err != nil {
		t.Fatal(err)
	}
	return conn
}

func readAnswer(t *testing.T, conn net.Conn, within time.Duration) *http.Response {
	t.Helper()
	conn.SetReadDeadline(time.Now().Add(within))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("no answer within %s: %v", within, err)
	}
	resp.Body.Close()
	return resp
}

// paddedPost is a valid POST body of exactly n bytes: a short content and
// JSON whitespace after it.
func paddedPost(n int) string {
	const head = `{"content":"padded"}`
	return head + strings.Repeat(" ", n-len(head))
}

// TestIdleSendersDoNotStarveOthers: connections that declare large bodies
// and send nothing, to IngestPubSub and to POST, hold no memory budget, so
// valid deliveries and POSTs beside them are answered at once instead of
// waiting for budget and failing 503.
func TestIdleSendersDoNotStarveOthers(t *testing.T) {
	f := newFixture(t, nil)
	ingest := ingestServer(t, f)
	cfg, err := f.svc.config()
	if err != nil {
		t.Fatal(err)
	}
	defer func(d time.Duration) { budgetWait = d }(budgetWait)
	budgetWait = time.Second
	// Declared bodies that, were they reserved from Content-Length (times
	// decodeCopies), would take exactly the whole default budget with 32
	// senders, and leave 8 more waiting for it.
	declared := DefaultBodyMemoryBytes/(4*32) - 1
	if int64(declared) > deliveryLimit(cfg) {
		t.Fatalf("idle deliveries of %d bytes would be oversized", declared)
	}
	for i := range 40 {
		holdRequest(t, ingest, "/", ceHeaders(fmt.Sprint("idle-", i), testSource), declared, "")
		holdRequest(t, f.srv.URL, "/", jsonCT, int(cfg.maxBodyBytes), "")
	}
	time.Sleep(300 * time.Millisecond) // the idle requests reach their handlers first
	for i := range 10 {
		id := fmt.Sprint("valid-", i)
		start := time.Now()
		if r := do(t, "POST", ingest+"/", eventBody(id, []byte("hello "+id), ""), ceHeaders(id, testSource)); r.status != http.StatusNoContent {
			t.Fatalf("delivery %d beside idle senders: %d %s after %s, want 204", i, r.status, r.body, time.Since(start))
		}
		start = time.Now()
		if r := do(t, "POST", f.srv.URL+"/", `{"content":"beside idle senders"}`, jsonCT); r.status != http.StatusOK {
			t.Fatalf("POST %d beside idle senders: %d %s after %s, want 200", i, r.status, r.body, time.Since(start))
		}
	}
}

// TestPostBodiesCountInBudget: POST bodies are read within the process's
// body budget (BODY_MEMORY_BYTES): with one body in flight holding all of a
// 1 MiB budget, another POST waits and is answered 503 with Retry-After; once
// the first is stored its share is free again.
func TestPostBodiesCountInBudget(t *testing.T) {
	f := newFixture(t, map[string]string{"BODY_MEMORY_BYTES": "1048576"})
	defer func(d time.Duration) { budgetWait = d }(budgetWait)
	budgetWait = 500 * time.Millisecond
	held := paddedPost(256 << 10)
	conn := holdRequest(t, f.srv.URL, "/", jsonCT, len(held), held[:200<<10])
	time.Sleep(300 * time.Millisecond) // the server has read what was sent
	r := do(t, "POST", f.srv.URL+"/", paddedPost(200<<10), jsonCT)
	if r.status != http.StatusServiceUnavailable || r.header.Get("Retry-After") == "" {
		t.Fatalf("POST beside a body holding the budget: %d (Retry-After %q) %s, want 503 with Retry-After", r.status, r.header.Get("Retry-After"), r.body)
	}
	if _, err := conn.Write([]byte(held[200<<10:])); err != nil {
		t.Fatal(err)
	}
	if resp := readAnswer(t, conn, 10*time.Second); resp.StatusCode != http.StatusOK {
		t.Fatalf("the held POST, completed: %d, want 200", resp.StatusCode)
	}
	if r := do(t, "POST", f.srv.URL+"/", paddedPost(200<<10), jsonCT); r.status != http.StatusOK {
		t.Fatalf("POST after the held one was stored: %d %s, want 200", r.status, r.body)
	}
}

// TestStalledBodyTimesOut: a body that stops arriving is answered 408 and
// its connection closed after bodyStallTimeout, and what it held of the
// budget is free again.
func TestStalledBodyTimesOut(t *testing.T) {
	f := newFixture(t, nil)
	ingest := ingestServer(t, f)
	defer func(d time.Duration) { bodyStallTimeout = d }(bodyStallTimeout)
	bodyStallTimeout = 300 * time.Millisecond
	var wg sync.WaitGroup
	for _, c := range []struct{ base, path string }{{f.srv.URL, "/"}, {f.srv.URL, "/messages"}, {ingest, "/"}} {
		hdr := jsonCT
		if c.base == ingest {
			hdr = ceHeaders("stalled", testSource)
		}
		conn := holdRequest(t, c.base, c.path, hdr, 256<<10, strings.Repeat(" ", 100<<10))
		wg.Add(1)
		go func() {
			defer wg.Done()
			start := time.Now()
			resp := readAnswer(t, conn, 5*time.Second)
			if resp.StatusCode != http.StatusRequestTimeout || !resp.Close {
				t.Errorf("%s%s stalled: %d (close %v) after %s, want 408 and the connection closed", c.base, c.path, resp.StatusCode, resp.Close, time.Since(start))
			}
		}()
	}
	wg.Wait()
	takeBudget(t, f.svc.bodyBudget())()
}

// takeBudget takes the whole of b, failing when any of it is held, and
// returns the func that gives it back (once).
func takeBudget(t *testing.T, b *bodyBudget) func() {
	t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.free != b.size || b.holders != 0 {
		t.Fatalf("budget in use: %d of %d free, %d holders", b.free, b.size, b.holders)
	}
	b.take(0, b.size)
	var once sync.Once
	return func() { once.Do(func() { b.release(b.size) }) }
}

// TestBudgetBreaksWaitOfAllHolders: bodies that hold all of the budget and
// all wait for more do not wait for each other until they time out: the last
// to wait gives way at once (503), and the first goes on; a body holding
// nothing waits behind bodies that grow.
func TestBudgetBreaksWaitOfAllHolders(t *testing.T) {
	defer func(d time.Duration) { budgetWait = d }(budgetWait)
	budgetWait = time.Minute
	b := newBodyBudget(100)
	ctx := t.Context()
	for range 2 {
		if err := b.acquire(ctx, 0, 50); err != nil {
			t.Fatal(err)
		}
	}
	first := make(chan error, 1)
	go func() { first <- b.acquire(ctx, 50, 30) }()
	for b.mu.Lock(); len(b.growers) == 0; b.mu.Lock() {
		b.mu.Unlock()
		time.Sleep(time.Millisecond)
	}
	b.mu.Unlock()
	fresh := make(chan error, 1)
	go func() { fresh <- b.acquire(ctx, 0, 10) }()
	start := time.Now()
	if err := b.acquire(ctx, 50, 30); err != errOverBudget {
		t.Fatalf("the last grower: %v, want errOverBudget at once", err)
	}
	if err := <-first; err != nil || time.Since(start) > 10*time.Second {
		t.Fatalf("the first grower: %v after %s, want granted", err, time.Since(start))
	}
	if err := <-fresh; err != nil {
		t.Fatalf("the fresh body after the growers: %v", err)
	}
	if b.free != 10 || b.holders != 2 {
		t.Fatalf("%d free, %d holders; want 10 and 2", b.free, b.holders)
	}
}

// TestOversizedPostClosesConnection: a POST body over MAX_BODY_BYTES is
// answered 413 with Connection: close, so net/http does not read (drain) the
// rest of a body it has refused, with or without Content-Length. The client
// reads while it writes, as a sender of a large body must: the server
// answers before the body ends, and Go's own Transport may report the reset
// of the unread rest instead of the answer it already has.
func TestOversizedPostClosesConnection(t *testing.T) {
	f := newFixture(t, nil)
	body := paddedPost(DefaultMaxBodyBytes + 10<<10)
	u, err := url.Parse(f.srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	for _, chunked := range []bool{false, true} {
		for _, path := range []string{"/", "/messages"} {
			conn, err := net.Dial("tcp", u.Host)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			head := fmt.Sprintf("POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n", path, u.Host)
			payload := []byte(body)
			if chunked {
				head += "Transfer-Encoding: chunked\r\n\r\n"
				payload = fmt.Appendf(nil, "%x\r\n%s\r\n0\r\n\r\n", len(body), body)
			} else {
				head += fmt.Sprintf("Content-Length: %d\r\n\r\n", len(body))
			}
			go func() {
				// An error here is the server refusing the rest: expected.
				conn.Write(append([]byte(head), payload...))
			}()
			br := bufio.NewReader(conn)
			conn.SetReadDeadline(time.Now().Add(time.Minute))
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatalf("POST %s (chunked %v): no answer: %v", path, chunked, err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusRequestEntityTooLarge || !resp.Close {
				t.Errorf("POST %s of %d bytes (chunked %v): %d, close %v; want 413 and the connection closed", path, len(body), chunked, resp.StatusCode, resp.Close)
			}
			// The server closes its end: the answer is followed by EOF (or
			// a reset, the rest of the body being unread), not by waiting.
			conn.SetReadDeadline(time.Now().Add(10 * time.Second))
			if n, err := br.Read(make([]byte, 1)); n != 0 || err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
				t.Errorf("POST %s (chunked %v): after the 413, %d bytes, %v; want the connection closed", path, chunked, n, err)
			}
		}
	}
}
