package function

import (
	"context"
	"fmt"
	"strings"
	"testing"
)

// TestDedupeIsPerTopic (item 2): one message id published on two topics is
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
