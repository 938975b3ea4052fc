package localrun

import (
	"strings"
	"testing"

	function "example.com/pscmessages"
	"example.com/pscmessages/store"
)

// TestDeadLettersEscapeControls: list and show print what a publisher sent
// (event id, source, reason, payload) with its control characters escaped,
// so it cannot drive the operator's terminal or forge lines; -raw prints the
// bytes as they are.
func TestDeadLettersEscapeControls(t *testing.T) {
	ctx := t.Context()
	c, db := sharedDatabase(t, "dl")
	url := c.SuperuserURL(db)
	st, err := store.Open(ctx, store.Config{ConnString: url, Migrate: true})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	const hostile = "x\x1b[2J\x1b]0;pwned\x07\u0085\u2028\u202e\u2066\x7fy"
	if err := st.AddDeadLetter(ctx, store.DeadLetter{EventID: "id" + hostile, EventSource: "//src" + hostile,
		EventType: function.MessagePublishedType, Reason: "reason" + hostile, Payload: []byte("payload" + hostile + "\nFAKE LINE")}); err != nil {
		t.Fatal(err)
	}
	var id string
	if err := pgxQueryRow(t, url, "SELECT id::text FROM dead_letters").Scan(&id); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"DATABASE_URL": url}
	for _, args := range [][]string{{"list"}, {"show", id}} {
		out, stderr, code := runMain(t, env, append([]string{"deadletters"}, args...)...)
		if code != 0 {
			t.Fatalf("deadletters %v: exit %d\n%s", args, code, stderr)
		}
		for _, r := range []rune{0x1b, 0x07, 0x85, 0x2028, 0x202e, 0x2066, 0x7f} {
			if strings.ContainsRune(out, r) {
				t.Errorf("deadletters %v prints %U unescaped:\n%q", args, r, out)
			}
		}
		if !strings.Contains(out, `id x\x1b[2J`) && !strings.Contains(out, `idx\x1b[2J`) {
			t.Errorf("deadletters %v does not show the escaped event id:\n%s", args, out)
		}
		if args[0] == "show" && (strings.Contains(out, "\nFAKE LINE") || !strings.Contains(out, `\nFAKE LINE`)) {
			t.Errorf("show lets the payload start a line of its own:\n%s", out)
		}
		out, stderr, code = runMain(t, env, append([]string{"deadletters"}, append(args[:1:1], append([]string{"-raw"}, args[1:]...)...)...)...)
		if code != 0 {
			t.Fatalf("deadletters %v -raw: exit %d\n%s", args, code, stderr)
		}
		if !strings.Contains(out, "id"+hostile[:len(hostile)-1]) && !strings.Contains(out, "idx\x1b[2J") {
			t.Errorf("deadletters %v -raw does not print the bytes as sent:\n%q", args, out)
		}
	}
}
