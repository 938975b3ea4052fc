package function

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"testing"
	"time"

	"example.com/pscmessages/store"
)

// TestListingIsStreamed, on the HTTP side: a page is encoded one
// message at a time, so answering it allocates about the page itself (the
// rows as read), not a second, growing copy of the whole answer. It counts
// bytes allocated, not time.
func TestListingIsStreamed(t *testing.T) {
	f := newFixture(t, map[string]string{"MAX_CONTENT_BYTES": fmt.Sprint(64 << 10)})
	const rows, size = 200, 64 << 10
	execSQL(t, f.url, "SELECT 1") // the fixture's database exists
	if r := postContent(t, f.srv.URL, "first"); r.status != 200 {
		t.Fatalf("POST: %d %s", r.status, r.body)
	}
	execSQL(t, f.url, "INSERT INTO messages (content) SELECT repeat(chr(97 + g % 26), $1) FROM generate_series(1, $2) g", size, rows)
	// store.List stops a page at MaxPageBytes of content (the rest is behind
	// Link/next), so the page is that budget, here 16 rows.
	pageBytes := uint64(min(rows*size, store.MaxPageBytes))
	for _, path := range []string{"/?limit=1000", "/messages?limit=1000"} {
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		resp, err := http.Get(f.srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		n, _ := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		runtime.ReadMemStats(&after)
		if resp.StatusCode != 200 || uint64(n) < pageBytes {
			t.Fatalf("GET %s: %d, %d bytes", path, resp.StatusCode, n)
		}
		// The store reads the page plus the one row that overflowed its
		// budget (see MemoryBound), and that is all a GET may hold.
		if alloc := after.TotalAlloc - before.TotalAlloc; alloc > (pageBytes+size)*3/2 {
			t.Errorf("GET %s of %d bytes allocated %d bytes, want under 1.5 times the page and one row", path, n, alloc)
		}
		// Written in pieces, it is still one JSON document.
		var page struct{ Messages []json.RawMessage }
		if r := do(t, "GET", f.srv.URL+path, "", nil); json.Unmarshal(r.body, &page) != nil || len(page.Messages) == 0 {
			t.Fatalf("GET %s: not one JSON document with messages: %.200s", path, r.body)
		}
	}
	// And the answer is still one JSON document.
	r := do(t, "GET", f.srv.URL+"/messages?limit=2", "", nil)
	var body struct {
		Messages []map[string]any `json:"messages"`
		Next     string           `json:"next"`
	}
	if err := json.Unmarshal(r.body, &body); err != nil || len(body.Messages) != 2 || !strings.HasPrefix(body.Next, "/messages?before=") {
		t.Fatalf("GET /messages?limit=2: %v %s", err, r.body)
	}
}

// BenchmarkListingEncode compares encoding a page of 100 short messages, as
// GET / answers by default, one message at a time (writeListing) with
// encoding it as one value (writeJSON, as GET did before).
func BenchmarkListingEncode(b *testing.B) {
	msgs := make([]store.Message, 100)
	for i := range msgs {
		msgs[i] = store.Message{ID: int64(i + 1), Content: fmt.Sprintf("benchmark message %d", i), CreatedAt: time.Now(), UpdatedAt: time.Now()}
	}
	b.Run("streamed", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			writeListing(discardWriter{}, msgs, true, "")
		}
	})
	b.Run("one value", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			contents := make([]string, len(msgs))
			for i, m := range msgs {
				contents[i] = m.Content
			}
			writeJSON(discardWriter{}, http.StatusOK, map[string]any{"messages": contents})
		}
	})
}

type discardWriter struct{}

func (discardWriter) Header() http.Header         { return http.Header{} }
func (discardWriter) Write(p []byte) (int, error) { return len(p), nil }
func (discardWriter) WriteHeader(int)             {}

// TestListingIsOneLine: a page is one line of JSON, as every other answer
// is (and as the README shows it), with or without a next link: the
// encoder's newline after "next" does not end up inside the object.
func TestListingIsOneLine(t *testing.T) {
	msgs := []store.Message{{ID: 2, Content: "hi", CreatedAt: time.Unix(0, 0).UTC(), UpdatedAt: time.Unix(0, 0).UTC()}}
	for _, next := range []string{"", "/messages?before=2&limit=1"} {
		for _, contentsOnly := range []bool{false, true} {
			rec := httptest.NewRecorder()
			writeListing(rec, msgs, contentsOnly, next)
			body := rec.Body.String()
			if strings.Count(body, "\n") != 1 || !strings.HasSuffix(body, "}\n") {
				t.Errorf("next %q, contentsOnly %v: %q, want one line ending in }\\n", next, contentsOnly, body)
			}
			if !json.Valid([]byte(body)) {
				t.Errorf("next %q: not JSON: %q", next, body)
			}
		}
	}
}

// TestEmptyListIsArray: an empty table lists as {"messages":[]}, never null.
func TestEmptyListIsArray(t *testing.T) {
	f := newFixture(t, nil)
	r := do(t, "GET", f.srv.URL+"/", "", nil)
	if string(bytes.TrimSpace(r.body)) != `{"messages":[]}` {
		t.Fatalf("GET / on an empty table = %s", r.body)
	}
}
