package function

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"

	"example.com/pscmessages/store"
)

func FuzzDecodeContent(f *testing.F) {
	for _, s := range []string{`{"content":"a"}`, `{"content":""}`, `[]`, `{"content":"\u0000"}`, "{\"content\":\"\xff\"}", `{"content":1}`, `null`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		content, err := decodeContent(body, 64)
		if err != nil {
			var apiErr *apiError
			if !errors.As(err, &apiErr) || apiErr.status/100 != 4 || apiErr.msg == "" {
				t.Fatalf("decodeContent(%q) error %v is not a 4xx with a message", body, err)
			}
			return
		}
		if content == "" || len(content) > 64 || strings.ContainsRune(content, 0) || !json.Valid(body) {
			t.Fatalf("decodeContent(%q) accepted %q", body, content)
		}
	})
}

func FuzzDecodeEvent(f *testing.F) {
	f.Add([]byte(`{"content":"a"}`), MessagePublishedType)
	f.Add([]byte("plain"), MessagePublishedType)
	f.Add([]byte{0xff}, MessagePublishedType)
	f.Add([]byte(`{"content":5}`), "other.type")
	f.Fuzz(func(t *testing.T, data []byte, typ string) {
		e := event.New()
		e.SetID("1")
		e.SetSource("//pubsub.googleapis.com/projects/p/topics/t")
		e.SetType(typ)
		_ = e.SetData("application/json", MessagePublishedData{Message: PubsubMessage{Data: data, MessageID: "1"}})
		content, key, err := decodeEvent(e, 64)
		if err != nil {
			var poison *poisonError
			if !errors.As(err, &poison) || poison.reason == "" {
				t.Fatalf("decodeEvent error %v is not a poison reason", err)
			}
			return
		}
		if content == "" || len(content) > 64 || strings.ContainsRune(content, 0) || key == "" {
			t.Fatalf("decodeEvent accepted %q (key %q)", content, key)
		}
	})
}

// TestConcurrentDeliveries guards against the CloudEvent adapter's habit of
// handing an event to another request's goroutine: every concurrent delivery
// must be answered promptly and store its own message.
func TestConcurrentDeliveries(t *testing.T) {
	fx := loadEventFixture(t, "pubsub_binary.json")
	client := &http.Client{Timeout: 10 * time.Second}
	const n = 200
	var wg sync.WaitGroup
	sem := make(chan struct{}, 32)
	for i := range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			id := fmt.Sprintf("concurrent-%d-%d", os.Getpid(), i)
			body := fmt.Sprintf(`{"message":{"data":%q,"messageId":%q},"subscription":"projects/test-project/subscriptions/s"}`,
				base64.StdEncoding.EncodeToString([]byte(id)), id)
			req, _ := http.NewRequest("POST", frameworkIngest+"/", strings.NewReader(body))
			for k, v := range fx.Headers {
				req.Header.Set(k, v)
			}
			req.Header.Set("ce-id", id)
			resp, err := client.Do(req)
			if err != nil {
				t.Errorf("delivery %d: %v", i, err)
				return
			}
			resp.Body.Close()
			if resp.StatusCode/100 != 2 {
				t.Errorf("delivery %d: %d", i, resp.StatusCode)
			}
		}()
	}
	wg.Wait()
	if got := countRows(t, os.Getenv("DATABASE_URL"), "SELECT count(*) FROM messages WHERE content LIKE $1", fmt.Sprintf("concurrent-%d-%%", os.Getpid())); got != n {
		t.Fatalf("%d rows, want %d", got, n)
	}
}

func TestBadDeliveries(t *testing.T) {
	cases := []struct {
		name, method, body string
		header             map[string]string
		status             int
	}{
		{"GET", "GET", "", nil, 405},
		// Deliveries that are not events are kept as dead letters:
		// TestUndeliverableDeliveriesAreKept.
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := do(t, tc.method, frameworkIngest+"/", tc.body, tc.header)
			if r.status != tc.status {
				t.Fatalf("status %d, want %d (%s)", r.status, tc.status, r.body)
			}
			if msg, _ := r.json(t)["error"].(string); msg == "" {
				t.Fatalf("no JSON error in %s", r.body)
			}
		})
	}
}

func TestTopicFromPath(t *testing.T) {
	for path, want := range map[string]string{
		"/projects/p/topics/t":                    "projects/p/topics/t",
		"/IngestPubSub/projects/p/topics/t/extra": "projects/p/topics/t",
		"/":                           "",
		"/projects/p/subscriptions/s": "",
		"/projects//topics/t":         "",
	} {
		if got := topicFromPath(path); got != want {
			t.Errorf("topicFromPath(%q) = %q, want %q", path, got, want)
		}
	}
}

func TestSettingsLimits(t *testing.T) {
	cases := []struct {
		env      map[string]string
		wantVar  string
		wantBody int64
	}{
		{env: map[string]string{}, wantBody: DefaultMaxBodyBytes},
		{env: map[string]string{"MAX_CONTENT_BYTES": "1000000"}, wantBody: 4000000},
		{env: map[string]string{"MAX_CONTENT_BYTES": "100", "MAX_BODY_BYTES": "50"}, wantVar: "MAX_BODY_BYTES"},
		{env: map[string]string{"MAX_CONTENT_BYTES": "0"}, wantVar: "MAX_CONTENT_BYTES"},
	}
	for _, tc := range cases {
		tc.env["DATABASE_URL"] = "postgres://u@h/d"
		s, err := loadSettings(func(k string) string { return tc.env[k] })
		var ce *store.ConfigError
		switch {
		case tc.wantVar != "" && (!errors.As(err, &ce) || ce.Var != tc.wantVar):
			t.Errorf("%v: err = %v, want one naming %s", tc.env, err, tc.wantVar)
		case tc.wantVar == "" && (err != nil || s.maxBodyBytes != tc.wantBody):
			t.Errorf("%v: body limit %d, err %v; want %d", tc.env, s.maxBodyBytes, err, tc.wantBody)
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
	if err := st.Pool().Ping(context.Background()); err == nil {
		t.Fatal("the pool opened during Close is still open")
	}
	if r := postContent(t, f.srv.URL, "after close"); r.status != http.StatusServiceUnavailable {
		t.Fatalf("POST after Close: %d %s, want 503", r.status, r.body)
	}
}
