package function

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/jackc/pgx/v5"
)

type eventFixture struct {
	Path        string            `json:"path"`
	Headers     map[string]string `json:"headers"`
	Body        json.RawMessage   `json:"body"`
	WantContent string            `json:"want_content"`
}

func loadEventFixture(t testing.TB, name string) eventFixture {
	t.Helper()
	b, err := os.ReadFile("testdata/" + name)
	if err != nil {
		t.Fatal(err)
	}
	var fx eventFixture
	if err := json.Unmarshal(b, &fx); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return fx
}

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

func pubsubEvent(t testing.TB, id, typ string, data []byte) event.Event {
	t.Helper()
	e := event.New()
	e.SetID(id)
	e.SetSource("//pubsub.googleapis.com/projects/test-project/topics/messages")
	e.SetType(typ)
	payload := map[string]any{"message": map[string]any{"data": base64.StdEncoding.EncodeToString(data), "messageId": id}, "subscription": "projects/test-project/subscriptions/s"}
	if err := e.SetData("application/json", payload); err != nil {
		t.Fatal(err)
	}
	return e
}

func TestIngestPoisonMessages(t *testing.T) {
	f := newFixture(t, map[string]string{"MAX_CONTENT_BYTES": "32"})
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
			e := pubsubEvent(t, fmt.Sprintf("poison-%d", i), tc.typ, tc.data)
			if tc.raw != nil {
				e.DataEncoded = tc.raw
			}
			for range 2 { // a redelivery keeps one dead letter
				if err := f.svc.Ingest(ctx, e); err != nil {
					t.Fatalf("poison message returned %v: it would be retried forever", err)
				}
			}
			var reason string
			var n int
			conn, err := pgx.Connect(ctx, f.url)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close(ctx)
			err = conn.QueryRow(ctx, "SELECT count(*) OVER (), reason FROM dead_letters WHERE event_id = $1", e.ID()).Scan(&n, &reason)
			if err != nil || n != 1 || !strings.Contains(reason, tc.reason) {
				t.Fatalf("dead letter: n=%d reason=%q err=%v, want one with %q", n, reason, err, tc.reason)
			}
		})
	}
	if n := countRows(t, f.url, "SELECT count(*) FROM messages"); n != 0 {
		t.Fatalf("poison stored %d messages", n)
	}
}

func TestIngestContentForms(t *testing.T) {
	f := newFixture(t, nil)
	cases := []struct{ data, want string }{
		{`{"content": "json content"}`, "json content"},
		{`plain text`, "plain text"},
		{`{"other": 1}`, `{"other": 1}`},
		{`{not json`, `{not json`},
		{"héllo ✓", "héllo ✓"},
	}
	for i, tc := range cases {
		if err := f.svc.Ingest(context.Background(), pubsubEvent(t, fmt.Sprint("form-", i), MessagePublishedType, []byte(tc.data))); err != nil {
			t.Fatalf("%q: %v", tc.data, err)
		}
	}
	got := listContents(t, f.srv.URL)
	for i, tc := range cases {
		if got[i] != tc.want {
			t.Errorf("message %d = %q, want %q", i, got[i], tc.want)
		}
	}
}
