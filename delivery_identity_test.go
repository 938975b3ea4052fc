package function

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestMessageIdentityBounds: a message id or source that cannot be part of a
// deduplication key (over its bound, or holding a NUL anywhere, the first
// byte included: PostgreSQL text cannot hold one) is kept as a dead letter
// naming why, and acknowledged; one exactly at its bound is stored. The
// bounds are the ones the README and maxMessageIDBytes/maxSourceBytes state,
// so a key always fits store.MaxKeyBytes.
func TestMessageIdentityBounds(t *testing.T) {
	f := newFixture(t, nil)
	base := ingestServer(t, f)
	testMigrated(t, f)
	sourceOf := func(n int) string { return testSource + strings.Repeat("s", n-len(testSource)) }
	cases := []struct {
		name, id, source string
		reason           string // "" for stored
	}{
		{"id of 256 bytes", strings.Repeat("1", 256), testSource, ""},
		{"id of 257 bytes", strings.Repeat("2", 257), testSource, "the message id is 257 bytes, more than 256"},
		{"id of 512 bytes", strings.Repeat("3", 512), testSource, "the message id is 512 bytes, more than 256"},
		{"NUL as the first byte of the id", "\x00abc", testSource, "the message id contains a NUL byte"},
		{"NUL as the last byte of the id", "abc\x00", testSource, "the message id contains a NUL byte"},
		{"id that is only a NUL", "\x00", testSource, "the message id contains a NUL byte"},
		{"source of 512 bytes", "src-1", sourceOf(512), ""},
		{"source of 513 bytes", "src-2", sourceOf(513), "the event source is 513 bytes, more than 512"},
	}
	stored := 0
	for _, c := range cases {
		content := "identity " + c.name
		before := len(deadLetters(t, f.url))
		r := do(t, "POST", base+"/", eventBody(c.id, []byte(content), "2026-11-30T10:00:00.123Z"), ceHeaders("ce-1", c.source))
		if r.status != http.StatusNoContent {
			t.Fatalf("%s: %d %s, want 204", c.name, r.status, r.body)
		}
		n := countRows(t, f.url, "SELECT count(*) FROM messages WHERE content = $1", content)
		dl := deadLetters(t, f.url)[before:]
		if c.reason == "" {
			stored++
			if n != 1 || len(dl) != 0 {
				t.Errorf("%s: %d rows stored and %d dead letters, want it stored", c.name, n, len(dl))
			}
			continue
		}
		if n != 0 || len(dl) != 1 {
			t.Errorf("%s: %d rows stored and %d dead letters, want one dead letter", c.name, n, len(dl))
		} else if !strings.Contains(dl[0].reason, c.reason) {
			t.Errorf("%s: dead letter reason %q, want it to say %q", c.name, dl[0].reason, c.reason)
		}
	}
	if m := countRows(t, f.url, "SELECT count(*) FROM messages"); m != stored {
		t.Errorf("%d messages stored, want %d", m, stored)
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

// TestDedupeIsPerTopic: one message id published on two topics is
// two messages, on every delivery path; a redelivery of either stores nothing.
func TestDedupeIsPerTopic(t *testing.T) {
	f := newFixture(t, nil)
	events := eventServer(t, f)
	cases := []struct {
		name    string
		deliver func(t *testing.T, id, content, topicOrSub string)
	}{
		{"structured-mode delivery", func(t *testing.T, id, content, topic string) {
			body, _ := json.Marshal(map[string]any{"specversion": "1.0", "id": id, "source": "//pubsub.googleapis.com/" + topic,
				"type": MessagePublishedType, "data": json.RawMessage(pushBody(id, []byte(content), nil, "projects/p/subscriptions/s"))})
			r := do(t, "POST", events+"/", string(body), map[string]string{"Content-Type": "application/cloudevents+json"})
			if r.status/100 != 2 {
				t.Fatalf("%d %s", r.status, r.body)
			}
		}},
		{"binary-mode delivery", func(t *testing.T, id, content, topic string) {
			r := do(t, "POST", events+"/", pushBody(id, []byte(content), nil, "projects/p/subscriptions/s"), binaryHeaders(id, topic))
			if r.status/100 != 2 {
				t.Fatalf("%d %s", r.status, r.body)
			}
		}},
		{"legacy push, topic in the path", func(t *testing.T, id, content, topic string) {
			r := do(t, "POST", events+"/"+topic, pushBody(id, []byte(content), nil, "projects/p/subscriptions/s"), jsonCT)
			if r.status/100 != 2 {
				t.Fatalf("%d %s", r.status, r.body)
			}
		}},
		{"legacy push, keyed by subscription", func(t *testing.T, id, content, topic string) {
			sub := strings.Replace(topic, "/topics/", "/subscriptions/sub-of-", 1)
			r := do(t, "POST", events+"/", pushBody(id, []byte(content), nil, sub), jsonCT)
			if r.status/100 != 2 {
				t.Fatalf("%d %s", r.status, r.body)
			}
		}},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			id := fmt.Sprintf("same-id-%d", i)
			content := "per topic " + tc.name
			for range 2 { // each delivered twice: redeliveries store nothing
				for _, topic := range []string{"projects/p/topics/a", "projects/p/topics/b"} {
					tc.deliver(t, id, content, topic)
				}
			}
			if n := countRows(t, f.url, "SELECT count(*) FROM messages WHERE content = $1", content); n != 2 {
				t.Fatalf("message id %s on two topics, each delivered twice: %d rows, want 2", id, n)
			}
		})
	}
	if n := countRows(t, f.url, "SELECT count(*) FROM dead_letters"); n != 0 {
		t.Fatalf("%d dead letters", n)
	}
}

// TestPublishTimeKeepsItsFractionOfASecond: the same message id on the same
// topic with publish times apart by less than a second is two messages (an
// emulator restarted on a kept database numbers its messages from 1 again,
// and can do so within the second of the first), so both are stored, even
// with the same content; the redelivery of each stores nothing.
func TestPublishTimeKeepsItsFractionOfASecond(t *testing.T) {
	f := newFixture(t, nil)
	base := ingestServer(t, f)
	for i, publishTime := range []string{"2026-11-30T10:00:00.123Z", "2026-11-30T10:00:00.123Z", "2026-11-30T10:00:00.456Z",
		"2026-11-30T10:00:00.456789Z", "2026-11-30T10:00:00.456Z"} {
		r := do(t, "POST", base+"/", eventBody("7", []byte("same content"), publishTime), ceHeaders("7", testSource))
		if r.status != http.StatusNoContent {
			t.Fatalf("delivery %d (%s): %d %s", i, publishTime, r.status, r.body)
		}
	}
	if m, d := countRows(t, f.url, "SELECT count(*) FROM messages"), countRows(t, f.url, "SELECT count(*) FROM dead_letters"); m != 3 || d != 0 {
		t.Fatalf("%d messages and %d dead letters from three publish times within one second, want 3 and 0", m, d)
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
