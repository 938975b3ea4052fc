package function

import (
	"fmt"
	"strings"
	"sync"
	"testing"
)

func TestLegacyPostThenGet(t *testing.T) {
	f := newFixture(t, nil)
	r := postContent(t, f.srv.URL, "Hello CloudSQL IAM!")
	if r.status != 200 {
		t.Fatalf("POST: %d %s", r.status, r.body)
	}
	if got := r.json(t)["status"]; got != "Message added!" {
		t.Fatalf("status = %v, want Message added!", got)
	}
	if ct := r.header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type = %q", ct)
	}
	postContent(t, f.srv.URL, "second")
	got := listContents(t, f.srv.URL)
	if len(got) != 2 || got[0] != "Hello CloudSQL IAM!" || got[1] != "second" {
		t.Fatalf("GET / = %v, want both messages oldest first", got)
	}
}

func TestBadInput(t *testing.T) {
	f := newFixture(t, map[string]string{"MAX_CONTENT_BYTES": "16", "MAX_BODY_BYTES": "1120", RoutesVar: RoutesAll})
	cases := []struct {
		name, method, path, ctype, body string
		header                          map[string]string
		status                          int
		allow                           string
	}{
		{name: "no body", method: "POST", path: "/", ctype: "application/json", status: 400},
		{name: "whitespace body", method: "POST", path: "/", ctype: "application/json", body: "  \n", status: 400},
		{name: "invalid JSON", method: "POST", path: "/", ctype: "application/json", body: `{"content":`, status: 400},
		{name: "trailing garbage", method: "POST", path: "/", ctype: "application/json", body: `{"content":"a"} x`, status: 400},
		{name: "JSON array", method: "POST", path: "/", ctype: "application/json", body: `["a"]`, status: 400},
		{name: "JSON string", method: "POST", path: "/", ctype: "application/json", body: `"a"`, status: 400},
		{name: "JSON null", method: "POST", path: "/", ctype: "application/json", body: `null`, status: 400},
		{name: "missing content", method: "POST", path: "/", ctype: "application/json", body: `{"text":"a"}`, status: 400},
		{name: "null content", method: "POST", path: "/", ctype: "application/json", body: `{"content":null}`, status: 400},
		{name: "number content", method: "POST", path: "/", ctype: "application/json", body: `{"content":5}`, status: 400},
		{name: "object content", method: "POST", path: "/", ctype: "application/json", body: `{"content":{}}`, status: 400},
		{name: "empty content", method: "POST", path: "/", ctype: "application/json", body: `{"content":""}`, status: 400},
		{name: "blank content", method: "POST", path: "/", ctype: "application/json", body: `{"content":"  "}`, status: 400},
		{name: "NUL byte", method: "POST", path: "/", ctype: "application/json", body: `{"content":"a\u0000b"}`, status: 400},
		{name: "invalid UTF-8", method: "POST", path: "/", ctype: "application/json", body: "{\"content\":\"\xff\xfe\"}", status: 400},
		{name: "no content type", method: "POST", path: "/", body: `{"content":"a"}`, status: 415},
		{name: "form content type", method: "POST", path: "/", ctype: "application/x-www-form-urlencoded", body: `content=a`, status: 415},
		{name: "text content type", method: "POST", path: "/messages", ctype: "text/plain", body: `{"content":"a"}`, status: 415},
		{name: "latin1 charset", method: "POST", path: "/", ctype: "application/json; charset=latin1", body: `{"content":"a"}`, status: 415},
		{name: "content over limit", method: "POST", path: "/", ctype: "application/json", body: `{"content":"12345678901234567"}`, status: 413},
		{name: "body over limit", method: "POST", path: "/", ctype: "application/json", body: `{"content":"a","pad":"` + strings.Repeat("x", 1200) + `"}`, status: 413},
		{name: "bad idempotency key", method: "POST", path: "/", ctype: "application/json", body: `{"content":"a"}`, header: map[string]string{"Idempotency-Key": "has space"}, status: 400},
		{name: "DELETE root", method: "DELETE", path: "/", status: 405, allow: "GET, HEAD, POST"},
		{name: "PUT collection", method: "PUT", path: "/messages", status: 405, allow: "GET, HEAD, POST"},
		{name: "POST item", method: "POST", path: "/messages/1", status: 405, allow: "GET, HEAD, PUT, PATCH, DELETE"},
		{name: "unknown path", method: "GET", path: "/nope", status: 404},
		{name: "non-numeric id", method: "GET", path: "/messages/abc", status: 404},
		{name: "absent id", method: "GET", path: "/messages/424242", status: 404},
		{name: "bad limit", method: "GET", path: "/?limit=0", status: 400},
		{name: "huge limit", method: "GET", path: "/?limit=100000", status: 400},
		{name: "bad before", method: "GET", path: "/messages?before=x", status: 400},
		{name: "PUT without body", method: "PUT", path: "/messages/1", ctype: "application/json", status: 400},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := map[string]string{}
			for k, v := range tc.header {
				h[k] = v
			}
			if tc.ctype != "" {
				h["Content-Type"] = tc.ctype
			}
			r := do(t, tc.method, f.srv.URL+tc.path, tc.body, h)
			if r.status != tc.status {
				t.Fatalf("status = %d, want %d (body %s)", r.status, tc.status, r.body)
			}
			if msg, _ := r.json(t)["error"].(string); msg == "" {
				t.Fatalf("body %s has no error message", r.body)
			}
			if tc.allow != "" && r.header.Get("Allow") != tc.allow {
				t.Fatalf("Allow = %q, want %q", r.header.Get("Allow"), tc.allow)
			}
		})
	}
	if n := countRows(t, f.url, "SELECT count(*) FROM messages"); n != 0 {
		t.Fatalf("bad requests stored %d rows", n)
	}
}

func TestMessagesResource(t *testing.T) {
	f := newFixture(t, map[string]string{RoutesVar: RoutesAll})
	r := do(t, "POST", f.srv.URL+"/messages", `{"content":"first"}`, jsonCT)
	if r.status != 201 {
		t.Fatalf("create: %d %s", r.status, r.body)
	}
	created := r.json(t)
	loc := r.header.Get("Location")
	if want := fmt.Sprintf("/messages/%v", created["id"]); loc != want {
		t.Fatalf("Location = %q, want %q", loc, want)
	}
	if created["content"] != "first" || created["created_at"] == nil {
		t.Fatalf("created = %v", created)
	}

	r = do(t, "GET", f.srv.URL+loc, "", nil)
	if r.status != 200 || r.json(t)["content"] != "first" {
		t.Fatalf("read: %d %s", r.status, r.body)
	}
	for _, method := range []string{"PUT", "PATCH"} {
		r = do(t, method, f.srv.URL+loc, `{"content":"changed by `+method+`"}`, jsonCT)
		if r.status != 200 || r.json(t)["content"] != "changed by "+method {
			t.Fatalf("%s: %d %s", method, r.status, r.body)
		}
	}
	r = do(t, "GET", f.srv.URL+"/messages", "", nil)
	list := r.json(t)["messages"].([]any)
	if len(list) != 1 || list[0].(map[string]any)["content"] != "changed by PATCH" {
		t.Fatalf("list = %s", r.body)
	}
	if r = do(t, "DELETE", f.srv.URL+loc, "", nil); r.status != 204 {
		t.Fatalf("delete: %d %s", r.status, r.body)
	}
	for _, method := range []string{"GET", "DELETE"} {
		if r = do(t, method, f.srv.URL+loc, "", nil); r.status != 404 {
			t.Fatalf("%s after delete: %d", method, r.status)
		}
	}
	if r = do(t, "PUT", f.srv.URL+loc, `{"content":"x"}`, jsonCT); r.status != 404 {
		t.Fatalf("PUT after delete: %d", r.status)
	}
}

func TestIdempotencyKey(t *testing.T) {
	f := newFixture(t, nil)
	h := map[string]string{"Content-Type": "application/json", "Idempotency-Key": "order-7"}
	first := do(t, "POST", f.srv.URL+"/", `{"content":"once"}`, h)
	again := do(t, "POST", f.srv.URL+"/", `{"content":"once"}`, h)
	if first.status != 200 || again.status != 200 {
		t.Fatalf("statuses %d, %d", first.status, again.status)
	}
	if first.json(t)["id"] != again.json(t)["id"] || again.header.Get("Idempotent-Replayed") != "true" {
		t.Fatalf("retry was not a replay: %s / %s", first.body, again.body)
	}
	if r := do(t, "POST", f.srv.URL+"/", `{"content":"different"}`, h); r.status != 422 {
		t.Fatalf("reused key with other content: %d %s", r.status, r.body)
	}
	// Concurrent retries of one key land in one batch or several: still one row.
	var wg sync.WaitGroup
	h2 := map[string]string{"Content-Type": "application/json", "Idempotency-Key": "burst"}
	for range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if r := do(t, "POST", f.srv.URL+"/messages", `{"content":"burst"}`, h2); r.status != 201 {
				t.Errorf("burst POST: %d %s", r.status, r.body)
			}
		}()
	}
	wg.Wait()
	if n := countRows(t, f.url, "SELECT count(*) FROM messages"); n != 2 {
		t.Fatalf("%d rows, want 2", n)
	}
}
