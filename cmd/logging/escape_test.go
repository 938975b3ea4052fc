package logging

import (
	"strings"
	"testing"
)

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

// TestTextLinesEscapeControls: a message or value carrying controls is
// written on one text line, its newlines joined with spaces and the rest
// escaped, so that it cannot forge or hide a line.
func TestTextLinesEscapeControls(t *testing.T) {
	var buf syncBuffer
	New(&buf, Options{Format: FormatText}).Warn("GET /x\x1b[2J\ny", "event_id", "evil\x1b[31m\u2028\u202ex")
	line := buf.String()
	if strings.Count(line, "\n") != 1 || !strings.HasSuffix(line, "\n") {
		t.Fatalf("not one line: %q", line)
	}
	if want := ` WARN  GET /x\x1b[2J y event_id="evil\x1b[31m\u2028\u202ex"` + "\n"; !strings.HasSuffix(line, want) {
		t.Fatalf("line = %q, want it to end with %q", line, want)
	}
}
