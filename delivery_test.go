package function

import (
	"encoding/base64"
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"
)

// Every delivery, well formed, malformed or hostile, ends stored (2xx), kept
// in dead_letters with its reason (2xx), or failed transiently (5xx), and
// none fails another: the tests of delivery_*_test.go pin each case.

// TestFrameworkEventFormats posts real-shaped deliveries to the functions
// framework serving IngestPubSub, exactly as Cloud Run would, twice each: the
// redelivery must not store a second row.
func TestFrameworkEventFormats(t *testing.T) {
	url := os.Getenv("DATABASE_URL")
	for _, name := range []string{"pubsub_binary.json", "pubsub_structured.json", "pubsub_legacy_push.json"} {
		t.Run(name, func(t *testing.T) {
			fx := loadEventFixture(t, name)
			for attempt := range 2 {
				r := do(t, "POST", frameworkIngest+fx.Path, string(fx.Body), fx.Headers)
				if r.status/100 != 2 {
					t.Fatalf("delivery %d: %d %s", attempt, r.status, r.body)
				}
			}
			if n := countRows(t, url, "SELECT count(*) FROM messages WHERE content = $1", fx.WantContent); n != 1 {
				t.Fatalf("%d rows with %q, want 1", n, fx.WantContent)
			}
		})
	}
	// And the HTTP function through the framework, as deployed.
	r := postContent(t, frameworkMessages, "via framework")
	if r.status != 200 {
		t.Fatalf("POST via framework: %d %s", r.status, r.body)
	}
	if msgs := listContents(t, frameworkMessages); msgs[len(msgs)-1] != "via framework" {
		t.Fatalf("GET via framework: %v", msgs)
	}
}

// TestMessageContentForms: a message's data is stored as its "content"
// field when it is a JSON object that has one, else as the text it is.
func TestMessageContentForms(t *testing.T) {
	f := newFixture(t, nil)
	base := ingestServer(t, f)
	cases := []struct{ data, want string }{
		{`{"content": "json content"}`, "json content"},
		{`plain text`, "plain text"},
		{`{"other": 1}`, `{"other": 1}`},
		{`{not json`, `{not json`},
		{"héllo ✓", "héllo ✓"},
	}
	for i, tc := range cases {
		id := fmt.Sprint("form-", i)
		if r := do(t, "POST", base+"/", eventBody(id, []byte(tc.data), ""), ceHeaders(id, testSource)); r.status != http.StatusNoContent {
			t.Fatalf("%q: %d %s", tc.data, r.status, r.body)
		}
	}
	got := listContents(t, f.srv.URL)
	for i, tc := range cases {
		if got[i] != tc.want {
			t.Errorf("message %d = %q, want %q", i, got[i], tc.want)
		}
	}
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
