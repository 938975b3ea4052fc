package function

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"
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

// TestOversizedDeliveryIsLeftToPubSub: a 10 MB message, larger than the
// function decodes, is answered 500 (not acknowledged, so Pub/Sub keeps it
// whole and moves it to the dead-letter topic after its last attempt), is
// streamed past without being held, keeps nothing in dead_letters, and the
// log names it, its size and the limit.
func TestOversizedDeliveryIsLeftToPubSub(t *testing.T) {
	f := newFixture(t, nil)
	base := ingestServer(t, f)
	data := bytes.Repeat([]byte("0123456789"), 1<<20) // 10 MB
	body := eventBody("big-1", data, "")
	for attempt := range 2 {
		// Bytes allocated, not time: what a delivery costs in this process
		// (server and client). Decoding the message whole (read, base64,
		// JSON, copies) allocated ~50 MB; streaming it past allocates a
		// small fraction of its size.
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		r := do(t, "POST", base+"/", body, ceHeaders("big-1", testSource))
		runtime.ReadMemStats(&after)
		if r.status != http.StatusInternalServerError || !strings.Contains(string(r.body), fmt.Sprintf("the delivery of %d bytes exceeds the %d bytes IngestPubSub decodes", len(body), deliveryLimit(settings{maxBodyBytes: DefaultMaxBodyBytes}))) {
			t.Fatalf("delivery %d: %d %s, want 500 naming its size and the limit", attempt, r.status, r.body)
		}
		if alloc := after.TotalAlloc - before.TotalAlloc; alloc > uint64(len(body))/4 {
			t.Errorf("delivery %d of %d bytes allocated %d bytes, want under a quarter of its size", attempt, len(body), alloc)
		}
	}
	// A small one opens the store, and so the tables, to look in.
	if r := do(t, "POST", base+"/", eventBody("small-1", []byte("small"), ""), ceHeaders("small-1", testSource)); r.status != http.StatusNoContent {
		t.Fatalf("small delivery: %d %s", r.status, r.body)
	}
	if dl := deadLetters(t, f.url); len(dl) != 0 {
		t.Fatalf("%d dead letters, want none: the delivery is Pub/Sub's to keep", len(dl))
	}
	logs := f.logs.String()
	if !strings.Contains(logs, `"message":"delivery too large to decode; not acknowledged, so Pub/Sub keeps it whole`) ||
		!strings.Contains(logs, `"event_id":"big-1"`) || !strings.Contains(logs, fmt.Sprintf(`"size":%d`, len(body))) {
		t.Fatalf("no WARNING naming the delivery and its size:\n%s", logs)
	}
	if strings.Contains(logs, "0123456789") {
		t.Fatal("the content reached the log")
	}
}

// TestEventMemoryBudget: a delivery that finds the process's body budget
// taken waits, then is answered 503 with Retry-After (redelivered later).
func TestEventMemoryBudget(t *testing.T) {
	f := newFixture(t, nil)
	base := ingestServer(t, f)
	budget := f.svc.bodyBudget()
	defer func(d time.Duration) { budgetWait = d }(budgetWait)
	budgetWait = 100 * time.Millisecond
	release := takeBudget(t, budget)
	defer release()
	// The wait is budgetWait; far beyond it, the delivery waits for ever.
	r := doWithin(t, 5*time.Second, "POST", base+"/", eventBody("b-1", []byte("x"), ""), ceHeaders("b-1", testSource))
	if r.status != http.StatusServiceUnavailable || r.header.Get("Retry-After") == "" {
		t.Fatalf("with the budget taken: %d (Retry-After %q) %s, want 503 with Retry-After", r.status, r.header.Get("Retry-After"), r.body)
	}
	release()
	if r := do(t, "POST", base+"/", eventBody("b-1", []byte("x"), ""), ceHeaders("b-1", testSource)); r.status != http.StatusNoContent {
		t.Fatalf("after release: %d %s", r.status, r.body)
	}
}

// TestFieldSniffer: the ids of an oversized delivery are found in its stream
// whatever the chunking, after data of any size, and are bounded.
func TestFieldSniffer(t *testing.T) {
	body := `{"message":{"attributes":{"k":"\"messageId\":\"no"},"data":"` + strings.Repeat("QUJD", 1000) +
		`","messageId":"123","message_id":"123"},"subscription":"projects/p/subscriptions/s","id":"` + strings.Repeat("x", 5000) + `"}`
	for _, chunk := range []int{1, 7, 4096, len(body)} {
		f := newFieldSniffer("id", "messageId", "subscription", "source")
		for b := []byte(body); len(b) > 0; {
			n := min(chunk, len(b))
			f.Write(b[:n])
			b = b[n:]
		}
		if f.found["messageId"] != "123" || f.found["subscription"] != "projects/p/subscriptions/s" ||
			len(f.found["id"]) != maxSniffedValue || f.found["source"] != "" {
			t.Fatalf("chunks of %d: found %q", chunk, f.found)
		}
	}
}

// TestChunkedDeliveries: a delivery without Content-Length (chunked) is read
// as one with it: stored when it fits, left unacknowledged (500) when not.
func TestChunkedDeliveries(t *testing.T) {
	f := newFixture(t, nil)
	base := ingestServer(t, f)
	post := func(body string) int {
		req, _ := http.NewRequest("POST", base+"/", io.MultiReader(strings.NewReader(body))) // no length: chunked
		for k, v := range ceHeaders("chunked-"+fmt.Sprint(len(body)), testSource) {
			req.Header.Set(k, v)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	small := eventBody("c-1", []byte(strings.Repeat("s", 60<<10)), "")
	big := eventBody("c-2", bytes.Repeat([]byte("b"), 2<<20), "")
	if st := post(small); st != http.StatusNoContent {
		t.Fatalf("small chunked delivery: %d", st)
	}
	if st := post(big); st != http.StatusInternalServerError {
		t.Fatalf("big chunked delivery: %d, want 500", st)
	}
	if n := countRows(t, f.url, "SELECT count(*) FROM messages"); n != 1 {
		t.Fatalf("%d messages, want the small one", n)
	}
	if dl := deadLetters(t, f.url); len(dl) != 0 {
		t.Fatalf("dead letters %v, want none", dl)
	}
	if !strings.Contains(f.logs.String(), fmt.Sprintf(`"event_id":"chunked-%d"`, len(big))) || !strings.Contains(f.logs.String(), fmt.Sprintf(`"size":%d`, len(big))) {
		t.Fatalf("the log does not name the big delivery and its size:\n%s", f.logs.String())
	}
}
