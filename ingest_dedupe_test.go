package function

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
)

// TestDedupeIsPerTopic: one message id published on two topics is
// two messages, on every delivery path; a redelivery of either stores nothing.
func TestDedupeIsPerTopic(t *testing.T) {
	f := newFixture(t, nil)
	events := eventServer(t, f)
	cases := []struct {
		name    string
		deliver func(t *testing.T, id, content, topicOrSub string)
	}{
		{"decoded CloudEvent", func(t *testing.T, id, content, topic string) {
			e := pubsubEvent(t, id, MessagePublishedType, []byte(content))
			e.SetSource("//pubsub.googleapis.com/" + topic)
			if err := f.svc.Ingest(context.Background(), e); err != nil {
				t.Fatal(err)
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
