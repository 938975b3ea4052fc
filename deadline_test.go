package function

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// TestExpiredRequestIsNotAnsweredStored, over HTTP: a POST or a
// delivery whose request context ends while its row waits to be written is
// not answered 2xx, whatever the handler writes for a caller that left; its
// retry stores it exactly once.
func TestExpiredRequestIsNotAnsweredStored(t *testing.T) {
	f := newFixture(t, map[string]string{"DB_QUERY_TIMEOUT": "1m"})
	testMigrated(t, f)
	cases := []struct {
		name    string
		handler http.HandlerFunc
		path    string
		body    string
		header  map[string]string
		content string
	}{
		{"POST /", f.svc.ServeHTTP, "/", `{"content":"expired root post"}`,
			map[string]string{"Content-Type": "application/json", "Idempotency-Key": "expired-root"}, "expired root post"},
		{"POST /messages", f.svc.ServeHTTP, "/messages", `{"content":"expired resource post"}`,
			map[string]string{"Content-Type": "application/json", "Idempotency-Key": "expired-resource"}, "expired resource post"},
		{"IngestPubSub delivery", f.svc.serveEvent, "/", pushBody("expired-delivery", []byte("expired delivery"), nil, "projects/p/subscriptions/s"),
			binaryHeaders("expired-delivery", "projects/p/topics/t"), "expired delivery"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			request := func(ctx context.Context) *http.Request {
				r := httptest.NewRequestWithContext(ctx, "POST", tc.path, strings.NewReader(tc.body))
				for k, v := range tc.header {
					r.Header.Set(k, v)
				}
				return r
			}
			release := holdLock(t, f.url, "messages")
			ctx, cancel := context.WithCancel(context.Background())
			rec := httptest.NewRecorder()
			done := make(chan struct{})
			go func() { tc.handler(rec, request(ctx)); close(done) }()
			awaitLockWait(t, f.url)
			cancel()
			select {
			case <-done:
			case <-time.After(time.Minute):
				t.Fatal("the handler did not return after its context ended")
			}
			if rec.Code/100 == 2 {
				t.Fatalf("a request whose context ended before its row was written was answered %d %s", rec.Code, rec.Body)
			}
			release()
			retry := httptest.NewRecorder()
			tc.handler(retry, request(context.Background()))
			if retry.Code/100 != 2 {
				t.Fatalf("retry: %d %s", retry.Code, retry.Body)
			}
			if n := countRows(t, f.url, "SELECT count(*) FROM messages WHERE content = $1", tc.content); n != 1 {
				t.Fatalf("%d rows after the retry, want 1", n)
			}
		})
	}
	if n := countRows(t, f.url, "SELECT count(*) FROM dead_letters"); n != 0 {
		t.Fatalf("%d dead letters for valid messages", n)
	}
}
