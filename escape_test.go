package function

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
)

// hostileText is every kind of character a sender could use to forge, hide
// or reorder a log line, or to drive the terminal it is read on.
const hostileText = "a\x1b[2J\x1b]0;pwned\x07\vb\fc\x7fd\u0085e\u009bf\u2028g\u2029h\u202ei\u2066j\u200fk\u061cl\nm\rn"

// hostileRunes are the runes of hostileText that must never reach a text line.
var hostileRunes = []rune{0x1b, 0x07, '\v', '\f', 0x7f, 0x85, 0x9b, 0x2028, 0x2029, 0x202e, 0x2066, 0x200f, 0x061c, '\r'}

func checkNoControls(t *testing.T, what, text string) {
	t.Helper()
	for _, r := range hostileRunes {
		if strings.ContainsRune(text, r) {
			t.Errorf("%s carries %U unescaped: %q", what, r, text)
		}
	}
}

// TestTextLogEscapesControls: what a sender controls (a dead letter's event
// id at the default level, a request path at debug) reaches a text log line
// with its controls escaped, one line per record; in JSON the same lines
// stay valid JSON that decode to what was sent.
func TestTextLogEscapesControls(t *testing.T) {
	for _, format := range []string{"text", "json"} {
		t.Run(format, func(t *testing.T) {
			f := newFixture(t, map[string]string{"LOG_FORMAT": format, "LOG_LEVEL": "debug"})
			ingest := ingestServer(t, f)
			// A structured-mode event with a hostile id and no data: kept as a dead letter.
			// The second id has no blank, so nothing else would quote it.
			for _, id := range []string{hostileText, "evil\x1b[31m\u2028\u0085\u202ex"} {
				body, _ := json.Marshal(map[string]any{"specversion": "1.0", "id": id, "source": "//s", "type": MessagePublishedType})
				if r := do(t, "POST", ingest+"/", string(body), map[string]string{"Content-Type": "application/cloudevents+json"}); r.status != http.StatusNoContent {
					t.Fatalf("hostile event: %d %s", r.status, r.body)
				}
			}
			do(t, "GET", f.srv.URL+"/x%1b%5b2J%e2%80%a8y%c2%85z", "", nil)
			logs := f.logs.String()
			if !strings.Contains(logs, "event kept in dead_letters") || !strings.Contains(logs, "GET /x") {
				t.Fatalf("missing lines:\n%s", logs)
			}
			for _, line := range strings.Split(strings.TrimSuffix(logs, "\n"), "\n") {
				if format == "text" {
					checkNoControls(t, "text line", line)
					continue
				}
				var m map[string]any
				if err := json.Unmarshal([]byte(line), &m); err != nil {
					t.Errorf("not one JSON line: %q: %v", line, err)
				}
				if id, ok := m["event_id"]; ok && id != hostileText && id != "evil\x1b[31m\u2028\u0085\u202ex" {
					t.Errorf("event_id = %q, want %q", id, hostileText)
				}
			}
			// Line breaks of any kind (\v, \f, NEL, U+2028, U+2029 too) join
			// the line with spaces, as an error's lines do; the rest is escaped.
			if format == "text" && !strings.Contains(logs, `event_id="a\x1b[2J\x1b]0;pwned\a b c\x7fd e\u009bf g h\u202ei\u2066j\u200fk\u061cl m n"`) {
				t.Errorf("event_id not escaped as Go quotes it:\n%s", logs)
			}
		})
	}
}

// TestEscapeControl: controls, separators, bidi controls, invalid bytes and
// the backslash are escaped; other text, non-ASCII letters included, is not.
func TestEscapeControl(t *testing.T) {
	for in, want := range map[string]string{
		"plain text, café 日本": "plain text, café 日本",
		"\x1b[31m":            `\x1b[31m`,
		"a\tb\nc":             `a\tb\nc`,
		"\x7f\u0085\u009b":    `\x7f\u0085\u009b`,
		"\u2028\u2029":        `\u2028\u2029`,
		"\u202a\u202e\u2066\u2069\u200e\u200f\u061c": `\u202a\u202e\u2066\u2069\u200e\u200f\u061c`,
		"\xff\xfe":   `\xff\xfe`,
		`back\slash`: `back\\slash`,
	} {
		if got := EscapeControl(in); got != want {
			t.Errorf("EscapeControl(%q) = %s, want %s", in, got, want)
		}
	}
}
