package function

import (
	"fmt"
	"strings"
	"testing"
)

// escapeAll writes s as a JSON string with every byte below 0x80 escaped as
// \u00XX, the most bytes JSON can spend on content.
func escapeAll(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		if r < 0x80 {
			fmt.Fprintf(&b, `\u%04x`, r)
		} else {
			b.WriteRune(r)
		}
	}
	b.WriteByte('"')
	return b.String()
}

// TestContentWithinTheLimitIsNeverRefusedForItsEscaping: content of exactly
// MAX_CONTENT_BYTES fits the default body limit however its JSON is escaped
// (six bytes per control character), and is stored exactly. Before the fix
// the default body limit was 4 × MAX_CONTENT_BYTES and such a POST got 413.
func TestContentWithinTheLimitIsNeverRefusedForItsEscaping(t *testing.T) {
	f := newFixture(t, nil)
	content := strings.Repeat("\x01", DefaultMaxContentBytes-1) + "x"
	body := `{"content":` + escapeAll(content) + `}`
	r := do(t, "POST", f.srv.URL+"/messages", body, jsonCT)
	if r.status != 201 {
		t.Fatalf("POST of %d bytes of content in a body of %d bytes: %d %.200s, want 201", len(content), len(body), r.status, r.body)
	}
	if n := countRows(t, f.url, "SELECT count(*) FROM messages WHERE content = $1", content); n != 1 {
		t.Fatal("the content stored is not the content sent")
	}
	// One byte more is refused for its content, not its body.
	over := `{"content":` + escapeAll(content+"y") + `}`
	if r := do(t, "POST", f.srv.URL+"/messages", over, jsonCT); r.status != 413 || !strings.Contains(string(r.body), "content exceeds") {
		t.Errorf("content one byte over the limit: %d %s, want 413 naming the content", r.status, r.body)
	}
}

// TestContentIsStoredExactlyOrRefused: content is stored byte for byte as
// sent, or refused with a 4xx (HTTP) or a dead letter (Pub/Sub); never
// altered. Before the fix a lone UTF-16 surrogate escape (\ud800) was
// silently stored as U+FFFD.
func TestContentIsStoredExactlyOrRefused(t *testing.T) {
	f := newFixture(t, map[string]string{RoutesVar: RoutesAll})
	base := ingestServer(t, f)
	cases := []struct {
		name, json string
		want       string // "" means refused
	}{
		{"plain", `"hello"`, "hello"},
		{"escaped control", `"a\u0001b\tc"`, "a\x01b\tc"},
		{"surrogate pair", `"\ud83d\ude00 smile"`, "\U0001F600 smile"},
		{"upper-case pair", `"\uD83D\uDE00"`, "\U0001F600"},
		{"literal U+FFFD", `"\ufffd and ` + "\ufffd" + `"`, "\ufffd and \ufffd"},
		{"escaped backslash then u", `"\\ud800"`, `\ud800`},
		{"lone high surrogate", `"a\ud800b"`, ""},
		{"high surrogate at the end", `"a\ud800"`, ""},
		{"high then high", `"\ud800\ud800"`, ""},
		{"lone low surrogate", `"\udc00"`, ""},
		{"NUL", `"a\u0000b"`, ""},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			body := `{"content":` + tc.json + `}`
			for _, req := range []struct{ method, path string }{{"POST", "/messages"}, {"PUT", "/messages/1"}} {
				r := do(t, req.method, f.srv.URL+req.path, body, jsonCT)
				switch {
				case tc.want == "" && r.status/100 != 4:
					t.Errorf("%s of %s: %d %s, want a 4xx", req.method, tc.json, r.status, r.body)
				case tc.want != "" && r.status/100 != 2:
					t.Errorf("%s of %s: %d %s, want it stored", req.method, tc.json, r.status, r.body)
				case tc.want != "":
					if got, _ := r.json(t)["content"].(string); got != tc.want {
						t.Errorf("%s of %s answered content %q, want %q", req.method, tc.json, got, tc.want)
					}
				}
			}
			id := fmt.Sprintf("exact-%d", i)
			r := do(t, "POST", base+"/", pushBody(id, []byte(body), nil, "projects/p/subscriptions/s"), binaryHeaders(id, "projects/p/topics/t"))
			if r.status != 204 {
				t.Fatalf("delivery: %d %s", r.status, r.body)
			}
			stored := countRows(t, f.url, "SELECT count(*) FROM messages WHERE content = $1", tc.want)
			kept := countRows(t, f.url, "SELECT count(*) FROM dead_letters WHERE event_id = $1", id)
			switch {
			case tc.want == "" && kept != 1:
				t.Errorf("delivery of %s: not kept as a dead letter", tc.json)
			case tc.want != "" && (kept != 0 || stored < 2):
				t.Errorf("delivery of %s: %d dead letters, %d rows with the exact content", tc.json, kept, stored)
			}
		})
	}
	// Nothing was ever stored altered.
	if n := countRows(t, f.url, "SELECT count(*) FROM messages WHERE content LIKE '%' || U&'\\FFFD' || '%' AND content NOT LIKE '%and%'"); n != 0 {
		t.Errorf("%d rows hold a replacement character nobody sent", n)
	}
}
