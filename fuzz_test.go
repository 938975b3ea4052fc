package function

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"unicode/utf8"

	"example.com/pscmessages/store"
)

func FuzzDecodeContent(f *testing.F) {
	for _, s := range []string{`{"content":"a"}`, `{"content":""}`, `[]`, `{"content":"\u0000"}`, "{\"content\":\"\xff\"}", `{"content":1}`, `null`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		content, err := decodeContent(body, 64)
		if err != nil {
			var apiErr *apiError
			if !errors.As(err, &apiErr) || apiErr.status/100 != 4 || apiErr.msg == "" {
				t.Fatalf("decodeContent(%q) error %v is not a 4xx with a message", body, err)
			}
			return
		}
		if content == "" || len(content) > 64 || strings.ContainsRune(content, 0) || !json.Valid(body) {
			t.Fatalf("decodeContent(%q) accepted %q", body, content)
		}
	})
}

// FuzzDecodeDelivery sends deliveries (path, headers, body) through what
// serveEvent does with one before the database: readDelivery within a limit,
// then decodeDelivery, or for a delivery over the limit oversizedMeta and
// oversizedReason. The limit is readDelivery's argument; a small one here
// reaches the streaming of an oversized delivery as often as the decoding.
// Whatever arrives is a poison reason or a message with its deduplication
// key, its content within MAX_CONTENT_BYTES, and never a panic.
func FuzzDecodeDelivery(f *testing.F) {
	const maxContent, limit = 64, 512
	for _, name := range []string{"pubsub_binary.json", "pubsub_structured.json", "pubsub_legacy_push.json"} {
		fx := loadEventFixture(f, name)
		h := fx.Headers
		f.Add(fx.Path, h["Content-Type"], h["ce-specversion"], h["ce-id"], h["ce-source"], h["ce-type"], "", "", "", []byte(fx.Body))
	}
	ce := ceHeaders("7", testSource)
	f.Add("/", ce["Content-Type"], "1.0", "7", testSource, MessagePublishedType, "", "", "", []byte(eventBody("7", []byte(`{"content":"a"}`), "2026-11-30T12:00:00.123Z")))
	f.Add("/", ce["Content-Type"], "1.0", "7", testSource, "other.type", "", "", "", []byte(eventBody("7", []byte{0xff}, "")))
	f.Add(pushPath, "", "", "", "", "", "8", "2026-11-30T12:00:00.123456789Z", "projects/p/subscriptions/s", []byte("plain words"))
	f.Add("/", "", "", "", "", "", "9", "not a time", "", []byte(`{"content":5}`))
	f.Add("/", "application/cloudevents+json", "", "", "", "", "", "", "",
		[]byte(`{"specversion":"1.0","id":"1","source":"//s","type":"`+MessagePublishedType+`","data_base64":"eyJtZXNzYWdlIjp7ImRhdGEiOiJZUT09IiwibWVzc2FnZUlkIjoiMSJ9fQ=="}`))
	// Binary mode whose data has a "specversion" of its own: its dead letter replays in binary mode.
	f.Add("/", "application/json", "1.0", "11", testSource, MessagePublishedType, "", "", "", []byte(`{"specversion":"1.0","message":{"data":"YQ==","messageId":"11"}}`))
	f.Add("/", "application/cloudevents-batch+json", "", "", "", "", "", "", "", []byte(`[]`))
	f.Add("/", "application/json", "", "", "", "", "", "", "", []byte(pushBody("10", bytes.Repeat([]byte("x"), limit), nil, "projects/p/subscriptions/s")))
	cfg := settings{maxContentBytes: maxContent, maxBodyBytes: minBodyBytes(maxContent)}
	svc := buildService(func() (settings, error) { return cfg, nil }, slog.New(slog.DiscardHandler), envOf(nil))
	f.Fuzz(func(t *testing.T, path, contentType, specversion, id, source, typ, pushID, publishTime, subscription string, body []byte) {
		r := httptest.NewRequest(http.MethodPost, "/", bytes.NewReader(body))
		r.URL.Path = path
		for k, v := range map[string]string{"Content-Type": contentType, "ce-specversion": specversion, "ce-id": id, "ce-source": source, "ce-type": typ,
			headerMessageID: pushID, headerPublishTime: publishTime, headerSubscription: subscription} {
			if v != "" {
				r.Header.Set(k, v)
			}
		}
		d, err := svc.readDelivery(nil, r, limit)
		if err != nil {
			t.Fatalf("reading a delivery from memory: %v", err)
		}
		defer d.release()
		if d.oversized {
			oversizedMeta(r, d)
			if d.body != nil || d.size <= limit || d.size != int64(len(body)) || oversizedReason(d, cfg) == "" {
				t.Fatalf("oversized delivery of %d bytes: held %d, size %d, reason %q", len(body), len(d.body), d.size, oversizedReason(d, cfg))
			}
			return
		}
		if int64(len(d.body)) > limit || !bytes.Equal(d.body, body) {
			t.Fatalf("a delivery of %d bytes within the limit read as %d bytes", len(body), len(d.body))
		}
		dec := decodeDelivery(r, d.body, maxContent)
		kept := dec.kept()
		if dec.poison != nil {
			if dec.poison.reason == "" {
				t.Fatal("poison without a reason")
			}
			if !isUnwrapped(r) && !bytes.Equal(kept.payload, body) {
				t.Fatalf("dead letter keeps %q of the delivery %q", kept.payload, body)
			}
			return
		}
		c := dec.content
		if strings.TrimSpace(c) == "" || len(c) > maxContent || strings.IndexByte(c, 0) >= 0 || !utf8.ValidString(c) {
			t.Fatalf("content %q accepted", c)
		}
		if !strings.HasPrefix(dec.key, "pubsub:"+dec.meta.source+"#") || len(dec.key) > store.MaxKeyBytes || dec.meta.id == "" {
			t.Fatalf("key %q for event %q from %q", dec.key, dec.meta.id, dec.meta.source)
		}
		// Kept as a dead letter (when the store refuses it), it replays
		// as the message it was.
		rr, err := replayRequest(context.Background(), store.DeadLetter{EventID: dec.meta.id, EventSource: dec.meta.source, EventType: dec.meta.typ, Payload: kept.payload})
		if err != nil {
			t.Fatal(err)
		}
		if again := decodeDelivery(rr, kept.payload, maxContent); again.poison != nil || again.content != c || again.key != dec.key {
			t.Fatalf("its dead letter %q replays as content %q, key %q, poison %v; want %q, %q", kept.payload, again.content, again.key, again.poison, c, dec.key)
		}
	})
}
