package function

import (
	"context"
	"errors"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"example.com/pscmessages/store"
)

// TestRequestRacingShutdownIs503: a request that got the store just before
// shutdown closed it (simulated by closing the store the service holds)
// is answered 503 with Retry-After, not 500.
func TestRequestRacingShutdownIs503(t *testing.T) {
	f := newFixture(t, nil)
	if r := do(t, "GET", f.srv.URL+"/messages", "", nil); r.status != http.StatusOK {
		t.Fatalf("GET: %d %s", r.status, r.body)
	}
	st, err := f.svc.db.get(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	st.Close() // the service still holds it, as a request in flight does
	for _, path := range []string{"/messages", "/messages/1"} {
		r := do(t, "GET", f.srv.URL+path, "", nil)
		if r.status != http.StatusServiceUnavailable || r.header.Get("Retry-After") == "" {
			t.Errorf("GET %s on a closed store: %d %s, want 503 with Retry-After", path, r.status, r.body)
		}
	}
}

// TestCloseDuringOpen closes the service while its first request is opening
// the pool: Close waits for that open and closes what it made, and nothing
// opens another pool afterwards.
func TestCloseDuringOpen(t *testing.T) {
	f := newFixture(t, nil)
	started, release := make(chan struct{}), make(chan struct{})
	var releaseOnce sync.Once
	unblock := func() { releaseOnce.Do(func() { close(release) }) }
	t.Cleanup(unblock) // a failed assertion must not leave the opener stuck
	var opened atomic.Pointer[store.Store]
	realOpen := f.svc.db.open
	f.svc.db.open = func(ctx context.Context) (*store.Store, error) {
		close(started)
		<-release
		st, err := realOpen(ctx)
		opened.Store(st)
		return st, err
	}
	first := make(chan response, 1)
	go func() { first <- postContent(t, f.srv.URL, "racing the close") }()
	<-started
	closed := make(chan struct{})
	go func() { f.svc.Close(); close(closed) }()
	select {
	case <-closed:
		t.Fatal("Close returned while the pool was still opening")
	case <-time.After(100 * time.Millisecond):
	}
	unblock()
	<-closed
	// The request that opened the pool races the close for its write: it is
	// either stored and answered 200, or answered 503.
	switch r := <-first; r.status {
	case http.StatusOK:
		if n := countRows(t, f.url, "SELECT count(*) FROM messages WHERE content = 'racing the close'"); n != 1 {
			t.Fatalf("answered 200 but %d rows stored", n)
		}
	case http.StatusServiceUnavailable:
	default:
		t.Fatalf("the request that opened the pool: %d %s", r.status, r.body)
	}
	st := opened.Load()
	if st == nil {
		t.Fatal("the open did not return a store")
	}
	if _, err := st.Get(context.Background(), 1); !errors.Is(err, store.ErrClosed) {
		t.Fatalf("the store opened during Close answers a read with %v, want ErrClosed", err)
	}
	if r := postContent(t, f.srv.URL, "after close"); r.status != http.StatusServiceUnavailable {
		t.Fatalf("POST after Close: %d %s, want 503", r.status, r.body)
	}
}
