package store

import "testing"

// TestStatementSpanNamesSkipLeadingComments: a statement that opens with
// comments, as a migration file does, is named by its first statement word,
// not by "--".
func TestStatementSpanNamesSkipLeadingComments(t *testing.T) {
	for sql, want := range map[string]string{
		"-- 0001: messages\n-- second line\nCREATE TABLE messages (id bigint)": "CREATE",
		"/* header */ INSERT INTO messages (content) VALUES ($1)":              "INSERT messages",
		"  \n-- only a comment":                             "",
		"WITH x AS (SELECT 1) DELETE FROM idempotency_keys": "DELETE idempotency_keys",
	} {
		op, target := summarize(sql)
		got := op
		if target != "" {
			got += " " + target
		}
		if got != want {
			t.Errorf("summarize(%q) = %q, want %q", sql, got, want)
		}
	}
}
