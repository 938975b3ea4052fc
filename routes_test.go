package function

import (
	"errors"
	"fmt"
	"testing"

	"example.com/pscmessages/store"
)

// TestAppendModeRefusesMutations is a public deployment with the default
// routes: the tutorial's contract and reads work, and every edit or delete is
// refused with 405, an Allow header without it, and a JSON error, leaving
// the table as it was.
func TestAppendModeRefusesMutations(t *testing.T) {
	f := newFixture(t, nil) // HTTP_ROUTES unset: the default
	if r := postContent(t, f.srv.URL, "keep me"); r.status != 200 || r.json(t)["status"] != "Message added!" {
		t.Fatalf("POST /: %d %s", r.status, r.body)
	}
	r := do(t, "POST", f.srv.URL+"/messages", `{"content":"and me"}`, jsonCT)
	if r.status != 201 {
		t.Fatalf("POST /messages: %d %s", r.status, r.body)
	}
	loc := r.header.Get("Location")
	if got := listContents(t, f.srv.URL); len(got) != 2 || got[0] != "keep me" || got[1] != "and me" {
		t.Fatalf("GET / = %v", got)
	}
	if r := do(t, "GET", f.srv.URL+"/messages", "", nil); r.status != 200 {
		t.Fatalf("GET /messages: %d %s", r.status, r.body)
	}
	if r := do(t, "GET", f.srv.URL+loc, "", nil); r.status != 200 || r.json(t)["content"] != "and me" {
		t.Fatalf("GET %s: %d %s", loc, r.status, r.body)
	}
	if r := do(t, "HEAD", f.srv.URL+loc, "", nil); r.status != 200 {
		t.Fatalf("HEAD %s: %d", loc, r.status)
	}

	var ids []string
	for _, id := range []int{1, 2, 3, 424242} {
		ids = append(ids, fmt.Sprintf("/messages/%d", id))
	}
	ids = append(ids, "/messages/abc", "/messages/0")
	for _, path := range ids {
		for _, method := range []string{"PUT", "PATCH", "DELETE"} {
			r := do(t, method, f.srv.URL+path, `{"content":"vandalised"}`, jsonCT)
			if r.status != 405 {
				t.Errorf("%s %s: %d %s, want 405", method, path, r.status, r.body)
				continue
			}
			if got := r.header.Get("Allow"); got != "GET, HEAD" {
				t.Errorf("%s %s: Allow = %q, want GET, HEAD", method, path, got)
			}
			if msg, _ := r.json(t)["error"].(string); msg == "" {
				t.Errorf("%s %s: body %s has no error", method, path, r.body)
			}
		}
	}
	if got := listContents(t, f.srv.URL); len(got) != 2 || got[0] != "keep me" || got[1] != "and me" {
		t.Fatalf("after the refused mutations GET / = %v", got)
	}
	if n := countRows(t, f.url, "SELECT count(*) FROM messages WHERE updated_at <> created_at"); n != 0 {
		t.Fatalf("%d messages were updated", n)
	}
}

// TestAllModeAllowsMutations: the opt-in lists and serves the edit methods.
func TestAllModeAllowsMutations(t *testing.T) {
	f := newFixture(t, map[string]string{RoutesVar: RoutesAll})
	loc := do(t, "POST", f.srv.URL+"/messages", `{"content":"a"}`, jsonCT).header.Get("Location")
	r := do(t, "POST", f.srv.URL+loc, "", nil)
	if r.status != 405 || r.header.Get("Allow") != "GET, HEAD, PUT, PATCH, DELETE" {
		t.Fatalf("POST item: %d Allow %q", r.status, r.header.Get("Allow"))
	}
	if r := do(t, "DELETE", f.srv.URL+loc, "", nil); r.status != 204 {
		t.Fatalf("DELETE: %d %s", r.status, r.body)
	}
}

func TestRoutesSetting(t *testing.T) {
	for _, tc := range []struct {
		value string
		edits bool
		bad   bool
	}{
		{value: "", edits: false},
		{value: "append", edits: false},
		{value: "all", edits: true},
		{value: "ALL", bad: true},
		{value: "true", bad: true},
		{value: "edit", bad: true},
	} {
		t.Run(fmt.Sprintf("%q", tc.value), func(t *testing.T) {
			env := map[string]string{"DATABASE_URL": "postgres://127.0.0.1/x", RoutesVar: tc.value}
			s, err := loadSettings(func(k string) string { return env[k] })
			var cfgErr *store.ConfigError
			if tc.bad {
				if !errors.As(err, &cfgErr) || cfgErr.Var != RoutesVar {
					t.Fatalf("err = %v, want a ConfigError naming %s", err, RoutesVar)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if s.routes.edits != tc.edits {
				t.Fatalf("edits = %v, want %v", s.routes.edits, tc.edits)
			}
		})
	}
}
