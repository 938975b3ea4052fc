package function

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"strings"
	"testing"
)

// TestOversizeDeliveriesAreRefused: a delivery over the size limit,
// on every path of the deployed IngestPubSub (binary and structured
// CloudEvents, legacy push with and without a topic), is never stored and
// never acknowledged: it is answered 500 with its reason, so Pub/Sub keeps it
// whole, and nothing of it is kept here. Its message is small and valid, so only the
// delivery's size can refuse it; the same delivery without the padding is
// stored (the guard that each body is otherwise acceptable).
func TestOversizeDeliveriesAreRefused(t *testing.T) {
	url := os.Getenv("DATABASE_URL")
	cfg, err := shared.config()
	if err != nil {
		t.Fatal(err)
	}
	maxEventBytes := int(deliveryLimit(cfg)) // what IngestPubSub decodes at most
	pad := map[string]string{"pad": strings.Repeat("x", maxEventBytes)}
	topic := "projects/test-project/topics/oversize"
	sub := "projects/test-project/subscriptions/oversize"
	cases := []struct {
		name    string
		request func(id string, data []byte, attrs map[string]string) (path, body string, header map[string]string)
	}{
		{"binary CloudEvent", func(id string, data []byte, attrs map[string]string) (string, string, map[string]string) {
			return "/", pushBody(id, data, attrs, sub), binaryHeaders(id, topic)
		}},
		{"structured CloudEvent", func(id string, data []byte, attrs map[string]string) (string, string, map[string]string) {
			b, _ := json.Marshal(map[string]any{
				"specversion": "1.0", "id": id, "type": MessagePublishedType,
				"source": "//pubsub.googleapis.com/" + topic, "datacontenttype": "application/json",
				"data": json.RawMessage(pushBody(id, data, attrs, sub)),
			})
			return "/", string(b), map[string]string{"Content-Type": "application/cloudevents+json"}
		}},
		{"legacy push with a topic path", func(id string, data []byte, attrs map[string]string) (string, string, map[string]string) {
			return "/" + topic, pushBody(id, data, attrs, sub), jsonCT
		}},
		{"legacy push", func(id string, data []byte, attrs map[string]string) (string, string, map[string]string) {
			return "/", pushBody(id, data, attrs, sub), jsonCT
		}},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tag := fmt.Sprintf("%d-%d", os.Getpid(), i)
			// The guard: without the padding, the same delivery is stored.
			path, body, h := tc.request("fits-"+tag, []byte("fits "+tag), nil)
			if r := do(t, "POST", frameworkIngest+path, body, h); r.status/100 != 2 {
				t.Fatalf("the delivery without padding: %d %s", r.status, r.body)
			}
			if n := countRows(t, url, "SELECT count(*) FROM messages WHERE content = $1", "fits "+tag); n != 1 {
				t.Fatalf("the delivery without padding stored %d rows", n)
			}
			id, content := "oversize-"+tag, "oversize "+tag
			path, body, h = tc.request(id, []byte(content), pad)
			if len(body) <= maxEventBytes {
				t.Fatalf("the oversize body is %d bytes, not over %d", len(body), maxEventBytes)
			}
			r := do(t, "POST", frameworkIngest+path, body, h)
			if n := countRows(t, url, "SELECT count(*) FROM messages WHERE content = $1", content); n != 0 {
				t.Fatalf("a %d-byte delivery (limit %d) was stored (answer %d)", len(body), maxEventBytes, r.status)
			}
			if msg, _ := r.json(t)["error"].(string); r.status != http.StatusInternalServerError || !strings.Contains(msg, "exceeds the") {
				t.Fatalf("an oversize delivery was answered %d %s; want 500 (not acknowledged) naming the limit", r.status, r.body)
			}
			if n := countRows(t, url, "SELECT count(*) FROM dead_letters WHERE event_id = $1", id); n != 0 {
				t.Fatalf("an oversize delivery left %d dead letters, want none (Pub/Sub keeps it whole)", n)
			}
		})
	}
}
