package function

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
)

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

// TestPoisonMessagesAreKeptOnce: an event that decodes but whose message
// can never be stored is acknowledged and kept with its reason, once however
// often it is redelivered, and nothing is stored.
func TestPoisonMessagesAreKeptOnce(t *testing.T) {
	f := newFixture(t, map[string]string{"MAX_CONTENT_BYTES": "32"})
	base := ingestServer(t, f)
	ctx := context.Background()
	cases := []struct {
		name, typ string
		data      []byte
		raw       []byte // event data replacing the envelope
		reason    string
	}{
		{name: "wrong type", typ: "google.cloud.storage.object.v1.finalized", data: []byte("x"), reason: "is not google.cloud.pubsub"},
		{name: "not an envelope", typ: MessagePublishedType, raw: []byte(`[1,2]`), reason: "not a Pub/Sub message"},
		{name: "undecodable base64", typ: MessagePublishedType, raw: []byte(`{"message":{"data":"!!!"}}`), reason: "not a Pub/Sub message"},
		{name: "empty", typ: MessagePublishedType, data: nil, reason: "empty"},
		{name: "not UTF-8", typ: MessagePublishedType, data: []byte{0xff, 0xfe, 0x00}, reason: "UTF-8"},
		{name: "NUL", typ: MessagePublishedType, data: []byte("a\x00b"), reason: "NUL"},
		{name: "too big", typ: MessagePublishedType, data: bytes.Repeat([]byte("x"), 33), reason: "exceeds 32 bytes"},
		{name: "content not string", typ: MessagePublishedType, data: []byte(`{"content": 42}`), reason: "must be a string"},
		{name: "blank content", typ: MessagePublishedType, data: []byte(`{"content": " "}`), reason: "empty"},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			id := fmt.Sprintf("poison-%d", i)
			header := ceHeaders(id, testSource)
			header["ce-type"] = tc.typ
			body := eventBody(id, tc.data, "")
			if tc.raw != nil {
				body = string(tc.raw)
			}
			for range 2 { // a redelivery keeps one dead letter
				if r := do(t, "POST", base+"/", body, header); r.status != http.StatusNoContent {
					t.Fatalf("poison message answered %d %s, want 204: it would be retried forever", r.status, r.body)
				}
			}
			var reason string
			var n int
			conn, err := pgx.Connect(ctx, f.url)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close(ctx)
			err = conn.QueryRow(ctx, "SELECT count(*) OVER (), reason FROM dead_letters WHERE event_id = $1", id).Scan(&n, &reason)
			if err != nil || n != 1 || !strings.Contains(reason, tc.reason) {
				t.Fatalf("dead letter: n=%d reason=%q err=%v, want one with %q", n, reason, err, tc.reason)
			}
		})
	}
	if n := countRows(t, f.url, "SELECT count(*) FROM messages"); n != 0 {
		t.Fatalf("poison stored %d messages", n)
	}
}
