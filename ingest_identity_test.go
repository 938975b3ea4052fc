package function

import (
	"net/http"
	"strings"
	"testing"
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
