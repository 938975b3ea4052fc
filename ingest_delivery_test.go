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
