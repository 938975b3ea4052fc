package function

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// Hostile and malformed deliveries on the event path, through the HTTP entry point as the
// platform calls it: every delivery ends stored (2xx), kept in dead_letters
// with its reason (2xx), or failed transiently (5xx); none fails another.

const testSource = "//pubsub.googleapis.com/projects/test-project/topics/messages"

// ingestServer serves f's IngestPubSub as Handler does.
func ingestServer(t testing.TB, f *fixture) string {
	t.Helper()
	srv := httptest.NewServer(frameworkWrap(f.svc.serveEvent, 0))
	t.Cleanup(srv.Close)
	return srv.URL
}

// eventBody is a messagePublished payload (the body of a binary-mode event).
func eventBody(id string, data []byte, publishTime string) string {
	msg := map[string]any{"data": base64.StdEncoding.EncodeToString(data)}
	if id != "" {
		msg["messageId"] = id
	}
	if publishTime != "" {
		msg["publishTime"] = publishTime
	}
	b, _ := json.Marshal(map[string]any{"message": msg, "subscription": "projects/test-project/subscriptions/s"})
	return string(b)
}

func ceHeaders(id, source string) map[string]string {
	return map[string]string{
		"Content-Type": "application/json", "ce-id": id, "ce-source": source,
		"ce-specversion": "1.0", "ce-type": MessagePublishedType,
	}
}

type deadLetterRow struct {
	reason  string
	payload []byte
	size    int64
	sum     []byte
}

func deadLetters(t testing.TB, url string) []deadLetterRow {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, "SELECT reason, coalesce(payload, ''), coalesce(payload_size, -1), coalesce(payload_sha256, '') FROM dead_letters ORDER BY id")
	if err != nil {
		t.Fatal(err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (d deadLetterRow, err error) {
		err = r.Scan(&d.reason, &d.payload, &d.size, &d.sum)
		return d, err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestUndeliverableDeliveriesAreKept: what cannot be decoded as a
// Pub/Sub event is acknowledged and kept, once however often it is
// redelivered, never answered 4xx (which Pub/Sub would redeliver forever) and
// never stored under a made-up key.
func TestUndeliverableDeliveriesAreKept(t *testing.T) {
	f := newFixture(t, nil)
	base := ingestServer(t, f)
	good := eventBody("1", []byte("hello"), "")
	noSource := ceHeaders("42", "")
	delete(noSource, "ce-source")
	cases := []struct {
		name, body string
		header     map[string]string
		reason     string
	}{
		{"specversion 9.9", good, map[string]string{"Content-Type": "application/json", "ce-id": "1", "ce-source": testSource, "ce-specversion": "9.9", "ce-type": MessagePublishedType}, "specversion"},
		{"JSON that is not an event", `{"hello":"world"}`, jsonCT, "neither a CloudEvent"},
		{"not JSON", "garbage", jsonCT, "neither a CloudEvent"},
		{"no content type, not JSON", "other garbage", nil, "neither a CloudEvent"},
		{"ce-id without the other attributes", `{}`, map[string]string{"Content-Type": "application/json", "ce-id": "1"}, "specversion"},
		{"ce-id without ce-source", good, noSource, "no source"},
		{"structured without source", `{"specversion":"1.0","id":"9","type":"` + MessagePublishedType + `","data":` + good + `}`, map[string]string{"Content-Type": "application/cloudevents+json"}, "no source"},
		{"structured, specversion 9.9", `{"specversion":"9.9","id":"9","source":"s","type":"t"}`, map[string]string{"Content-Type": "application/cloudevents+json"}, "specversion"},
		{"structured, not JSON", `{"specversion":`, map[string]string{"Content-Type": "application/cloudevents+json"}, "not a structured CloudEvent"},
		{"batch", `[]`, map[string]string{"Content-Type": "application/cloudevents-batch+json"}, "batched"},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			for attempt := range 2 {
				r := do(t, "POST", base+"/", tc.body, tc.header)
				if r.status != http.StatusNoContent {
					t.Fatalf("delivery %d: %d %s, want 204 (kept as a dead letter)", attempt, r.status, r.body)
				}
			}
			dl := deadLetters(t, f.url)
			if len(dl) != i+1 {
				t.Fatalf("%d dead letters after %d cases, want one per case however often delivered", len(dl), i+1)
			}
			if got := dl[i]; !strings.Contains(got.reason, tc.reason) || string(got.payload) != tc.body {
				t.Fatalf("dead letter %q with payload %q, want a reason with %q and the delivery", got.reason, got.payload, tc.reason)
			}
		})
	}
	if n := countRows(t, f.url, "SELECT count(*) FROM messages"); n != 0 {
		t.Fatalf("%d messages stored from undeliverable deliveries", n)
	}
}

// hostileDelivery is a delivery whose identity cannot be a key.
type hostileDelivery struct {
	name   string
	body   string
	header map[string]string
	reason string
}

func hostileDeliveries() []hostileDelivery {
	long := make([]byte, 1500)
	rand.Read(long)
	longID := hex.EncodeToString(long) // 3,000 random characters
	ffHeaders := ceHeaders("id-\xff-raw", testSource)
	return []hostileDelivery{
		{"NUL in message id", eventBody("a\u0000b", []byte("nul id"), ""), ceHeaders("nul-1", testSource), "NUL"},
		{"3,000-character message id", eventBody(longID, []byte("long id"), ""), ceHeaders(longID, testSource), "message id is 3000 bytes"},
		{"8,000-character ce-source", eventBody("src-1", []byte("long source"), ""), ceHeaders("src-1", testSource+"/"+strings.Repeat("s", 8000)), "event source is"},
		{"raw 0xff in ce-id", eventBody("", []byte("ff id"), ""), ffHeaders, "not valid UTF-8"},
	}
}

// TestHostileIdentitiesAreDeadLettered: hostile ids and sources end
// as dead letters (2xx), and 100 concurrent good events and 100 concurrent
// POSTs sharing their batches are all stored.
func TestHostileIdentitiesAreDeadLettered(t *testing.T) {
	f := newFixture(t, nil)
	base := ingestServer(t, f)
	hostile := hostileDeliveries()
	client := &http.Client{Timeout: 30 * time.Second}
	post := func(url, body string, header map[string]string) (int, string, error) {
		req, _ := http.NewRequest("POST", url, strings.NewReader(body))
		for k, v := range header {
			req.Header[http.CanonicalHeaderKey(k)] = []string{v} // raw bytes, as a hostile publisher sends them
		}
		resp, err := client.Do(req)
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), nil
	}
	var wg sync.WaitGroup
	errs := make(chan string, 1000)
	const good = 100
	for round := range 2 { // the platform redelivers; a redelivery changes nothing
		for _, h := range hostile {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if st, b, err := post(base+"/", h.body, h.header); err != nil || st != http.StatusNoContent {
					errs <- fmt.Sprintf("%s (round %d): %d %s %v, want 204", h.name, round, st, b, err)
				}
			}()
		}
		for i := range good {
			wg.Add(2)
			go func() {
				defer wg.Done()
				id := fmt.Sprintf("good-%d", i)
				if st, b, err := post(base+"/", eventBody(id, []byte("event "+id), ""), ceHeaders(id, testSource)); err != nil || st != http.StatusNoContent {
					errs <- fmt.Sprintf("good event %d: %d %s %v", i, st, b, err)
				}
			}()
			go func() {
				defer wg.Done()
				b, _ := json.Marshal(map[string]string{"content": fmt.Sprintf("post %d-%d", round, i)})
				if st, body, err := post(f.srv.URL+"/", string(b), jsonCT); err != nil || st != http.StatusOK {
					errs <- fmt.Sprintf("POST %d: %d %s %v", i, st, body, err)
				}
			}()
		}
		wg.Wait()
	}
	close(errs)
	for e := range errs {
		t.Error(e)
	}
	if n := countRows(t, f.url, "SELECT count(*) FROM messages WHERE content LIKE 'event good-%'"); n != good {
		t.Errorf("%d good events stored, want %d", n, good)
	}
	if n := countRows(t, f.url, "SELECT count(*) FROM messages WHERE content LIKE 'post %'"); n != 2*good {
		t.Errorf("%d POSTs stored, want %d", n, 2*good)
	}
	dl := deadLetters(t, f.url)
	if len(dl) != len(hostile) {
		t.Fatalf("%d dead letters, want %d (one per hostile event)", len(dl), len(hostile))
	}
	for _, h := range hostile {
		found := false
		for _, d := range dl {
			found = found || strings.Contains(d.reason, h.reason)
		}
		if !found {
			t.Errorf("%s: no dead letter with %q among %v", h.name, h.reason, dl)
		}
	}
}

// TestReusedMessageIDs, through HTTP: a redelivery (same id, same
// publish time, same content) stores nothing; the same id and publish time
// with other content is a dead letter logged at WARNING; the same id with a
// new publish time (an emulator restarted on a kept database numbers its
// messages from 1 again) is a new message and is stored.
func TestReusedMessageIDs(t *testing.T) {
	f := newFixture(t, nil)
	base := ingestServer(t, f)
	const t1, t2 = "2026-11-30T10:00:00.123Z", "2026-11-30T11:30:00.5Z"
	steps := []struct {
		content, publishTime string
		messages, dead       int
	}{
		{"A", t1, 1, 0},
		{"A", t1, 1, 0}, // redelivery
		{"B", t1, 1, 1}, // same id and time, other content: kept, not dropped
		{"B", t1, 1, 1}, // its redelivery: kept once
		{"A", t2, 2, 1}, // restarted emulator: same id and content, new message
		{"C", t2, 2, 2},
		{"D", "", 3, 2}, // no publish time: keyed by id alone
		{"D", "", 3, 2},
	}
	for i, s := range steps {
		r := do(t, "POST", base+"/", eventBody("7", []byte(s.content), s.publishTime), ceHeaders("7", testSource))
		if r.status != http.StatusNoContent {
			t.Fatalf("step %d: %d %s", i, r.status, r.body)
		}
		m := countRows(t, f.url, "SELECT count(*) FROM messages")
		d := countRows(t, f.url, "SELECT count(*) FROM dead_letters")
		if m != s.messages || d != s.dead {
			t.Fatalf("step %d (%q at %q): %d messages and %d dead letters, want %d and %d", i, s.content, s.publishTime, m, d, s.messages, s.dead)
		}
	}
	if !strings.Contains(f.logs.String(), `"severity":"WARNING","message":"event kept in dead_letters"`) ||
		!strings.Contains(f.logs.String(), "already stored with different content") {
		t.Fatalf("no WARNING about the reused id in the logs:\n%s", f.logs.String())
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

// pushPath is a push endpoint naming its topic, as the deploy configures it.
const pushPath = "/projects/test-project/topics/messages"

// TestWrappingDoesNotChangeTheKey: a message pushed with the wrapper, pushed
// without it (data as the body, metadata as x-goog-pubsub-* headers), sent
// by Eventarc and pulled, is one message: the same content under the same
// key, stored once whichever paths deliver it and in whichever order.
func TestWrappingDoesNotChangeTheKey(t *testing.T) {
	f := newFixture(t, nil)
	base := ingestServer(t, f)
	const published = "2026-12-06T04:00:00.123456789Z"
	forms := []struct {
		name, data string
		want       string
	}{
		{"text", "plain words", "plain words"},
		{"JSON with content", `{"content":"from a field"}`, "from a field"},
		{"JSON without content", `{"other":1}`, `{"other":1}`},
	}
	wrapped := func(id, data, publishTime string) {
		t.Helper()
		if r := do(t, "POST", base+pushPath, eventBody(id, []byte(data), publishTime), jsonCT); r.status != http.StatusNoContent {
			t.Fatalf("wrapped push: %d %s", r.status, r.body)
		}
	}
	unwrapped := func(id, data, publishTime string, extra map[string]string) {
		t.Helper()
		h := map[string]string{"X-Goog-Pubsub-Message-Id": id, "X-Goog-Pubsub-Subscription-Name": "projects/test-project/subscriptions/s"}
		if publishTime != "" {
			h["X-Goog-Pubsub-Publish-Time"] = publishTime
		}
		maps.Copy(h, extra)
		if r := do(t, "POST", base+pushPath, data, h); r.status != http.StatusNoContent {
			t.Fatalf("unwrapped push: %d %s", r.status, r.body)
		}
	}
	eventarc := func(id, data, publishTime string) {
		t.Helper()
		if r := do(t, "POST", base+"/", eventBody(id, []byte(data), publishTime), ceHeaders(id, testSource)); r.status != http.StatusNoContent {
			t.Fatalf("Eventarc event: %d %s", r.status, r.body)
		}
	}
	pulled := func(id, data, publishTime string) {
		t.Helper()
		msg := PubsubMessage{Data: []byte(data), MessageID: id}
		if publishTime != "" {
			msg.PublishTime, _ = time.Parse(time.RFC3339Nano, publishTime)
		}
		if err := f.svc.storePulled(context.Background(), "projects/test-project/topics/messages", msg); err != nil {
			t.Fatalf("pulled: %v", err)
		}
	}
	n := 0
	for _, form := range forms {
		for _, publishTime := range []string{published, ""} {
			for _, unwrappedFirst := range []bool{false, true} {
				n++
				id := fmt.Sprint(1000 + n)
				if unwrappedFirst {
					unwrapped(id, form.data, publishTime, nil)
					wrapped(id, form.data, publishTime)
				} else {
					wrapped(id, form.data, publishTime)
					// Attributes arrive as headers too: one named like a
					// CloudEvent attribute must not change the decoding.
					unwrapped(id, form.data, publishTime, map[string]string{"ce-id": "x", "ce-specversion": "1.0", "ce-source": "elsewhere", "Content-Type": "application/cloudevents+json"})
				}
				eventarc(id, form.data, publishTime)
				pulled(id, form.data, publishTime)
				if got := countRows(t, f.url, "SELECT count(*) FROM messages"); got != n {
					t.Fatalf("%s, publish time %q: %d messages after %d published, want each stored once", form.name, publishTime, got, n)
				}
				if got := countRows(t, f.url, "SELECT count(*) FROM messages WHERE content = $1", form.want); got == 0 {
					t.Fatalf("%s: content %q not stored", form.name, form.want)
				}
			}
		}
	}
	if dl := deadLetters(t, f.url); len(dl) != 0 {
		t.Fatalf("dead letters %v, want none", dl)
	}
}

// TestHostileUnwrappedHeaders: what an unwrapped delivery's headers carry is
// checked like any other identity; what cannot be a key is kept as a dead
// letter in the wrapped form, so that `deadletters replay` can decode it.
func TestHostileUnwrappedHeaders(t *testing.T) {
	f := newFixture(t, nil)
	base := ingestServer(t, f)
	sub := "projects/test-project/subscriptions/s"
	cases := []struct {
		name, path string
		header     map[string]string
		reason     string
	}{
		{"huge message id", pushPath, map[string]string{"X-Goog-Pubsub-Message-Id": strings.Repeat("9", 4000)}, "message id is 4000 bytes"},
		{"invalid UTF-8 id", pushPath, map[string]string{"X-Goog-Pubsub-Message-Id": "\xff\xfe"}, "not valid UTF-8"},
		{"publish time not a time", pushPath, map[string]string{"X-Goog-Pubsub-Message-Id": "7", "X-Goog-Pubsub-Publish-Time": "yesterday"}, "not an RFC 3339 time"},
		{"no topic, no subscription", "/", map[string]string{"X-Goog-Pubsub-Message-Id": "8"}, "neither its topic"},
		{"huge subscription", "/", map[string]string{"X-Goog-Pubsub-Message-Id": "9", "X-Goog-Pubsub-Subscription-Name": strings.Repeat("s", 4000)}, "event source is"},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if tc.header["X-Goog-Pubsub-Subscription-Name"] == "" {
				tc.header["X-Goog-Pubsub-Subscription-Name"] = sub
				if tc.path == "/" {
					delete(tc.header, "X-Goog-Pubsub-Subscription-Name")
				}
			}
			r := do(t, "POST", base+tc.path, "hello", tc.header)
			if r.status != http.StatusNoContent {
				t.Fatalf("%d %s, want 204 (kept as a dead letter)", r.status, r.body)
			}
			dl := deadLetters(t, f.url)
			if len(dl) != i+1 || !strings.Contains(dl[i].reason, tc.reason) {
				t.Fatalf("dead letters %v, want the %dth with a reason containing %q", dl, i+1, tc.reason)
			}
			if tc.path == "/" && tc.reason == "neither its topic" {
				if string(dl[i].payload) != "hello" {
					t.Fatalf("payload %q, want the delivery", dl[i].payload)
				}
				return
			}
			var kept MessagePublishedData
			if err := json.Unmarshal(dl[i].payload, &kept); err != nil || string(kept.Message.Data) != "hello" {
				t.Fatalf("payload %q (%v), want the message in its wrapped form", dl[i].payload, err)
			}
		})
	}
	if n := countRows(t, f.url, "SELECT count(*) FROM messages"); n != 0 {
		t.Fatalf("%d messages stored from hostile deliveries", n)
	}
}
