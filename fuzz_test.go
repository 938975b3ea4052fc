package function

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/cloudevents/sdk-go/v2/event"
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

func FuzzDecodeEvent(f *testing.F) {
	f.Add([]byte(`{"content":"a"}`), MessagePublishedType)
	f.Add([]byte("plain"), MessagePublishedType)
	f.Add([]byte{0xff}, MessagePublishedType)
	f.Add([]byte(`{"content":5}`), "other.type")
	f.Fuzz(func(t *testing.T, data []byte, typ string) {
		e := event.New()
		e.SetID("1")
		e.SetSource("//pubsub.googleapis.com/projects/p/topics/t")
		e.SetType(typ)
		_ = e.SetData("application/json", MessagePublishedData{Message: PubsubMessage{Data: data, MessageID: "1"}})
		content, key, err := decodeEvent(e, 64)
		if err != nil {
			var poison *poisonError
			if !errors.As(err, &poison) || poison.reason == "" {
				t.Fatalf("decodeEvent error %v is not a poison reason", err)
			}
			return
		}
		if content == "" || len(content) > 64 || strings.ContainsRune(content, 0) || key == "" {
			t.Fatalf("decodeEvent accepted %q (key %q)", content, key)
		}
	})
}
