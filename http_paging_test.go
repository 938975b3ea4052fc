package function

import (
	"fmt"
	"net/http"
	"strings"
	"testing"

	"example.com/pscmessages/store"
)

// TestFollowingNextLinksListsEveryMessageOnce: a client that follows the
// next links of /messages (the body's "next" and the Link header) and of /
// (the Link header) from the first page to the last sees every message
// exactly once, whether or not it asked for a page size. A
// next link is a URL the server built, so one that the server itself
// refuses (a limit of 0, say) or that skips or repeats messages breaks
// every client that pages.
func TestFollowingNextLinksListsEveryMessageOnce(t *testing.T) {
	f := newFixture(t, nil)
	const n = 250
	execSQL(t, testMigrated(t, f), fmt.Sprintf("INSERT INTO messages (content) SELECT 'm' || g FROM generate_series(1, %d) g", n))

	// linkNext is the target of a Link header's rel="next", or "".
	linkNext := func(h http.Header) string {
		link := h.Get("Link")
		if link == "" {
			return ""
		}
		if !strings.HasSuffix(link, `>; rel="next"`) || !strings.HasPrefix(link, "<") {
			t.Fatalf("Link %q is not <URL>; rel=\"next\"", link)
		}
		return strings.TrimSuffix(strings.TrimPrefix(link, "<"), `>; rel="next"`)
	}
	// walk follows next links from first and returns the contents in the
	// order listed and the number of pages.
	walk := func(t *testing.T, first string, fromBody bool) (contents []string, pages int) {
		t.Helper()
		for url := first; url != ""; pages++ {
			if pages > n+1 {
				t.Fatalf("still following next links after %d pages", pages)
			}
			r := do(t, "GET", f.srv.URL+url, "", nil)
			if r.status != http.StatusOK {
				t.Fatalf("GET %s (page %d): %d %s", url, pages+1, r.status, r.body)
			}
			body := r.json(t)
			for _, m := range body["messages"].([]any) {
				if s, ok := m.(string); ok {
					contents = append(contents, s)
				} else {
					contents = append(contents, m.(map[string]any)["content"].(string))
				}
			}
			next := linkNext(r.header)
			if fromBody {
				if b, _ := body["next"].(string); b != next {
					t.Fatalf("GET %s: body next %q, Link next %q", url, b, next)
				}
			}
			url = next
		}
		return contents, pages
	}
	for _, tt := range []struct {
		first    string
		fromBody bool
		pages    int
	}{
		{"/messages", true, 3},
		{"/messages?limit=7", true, (n + 6) / 7},
		{"/", false, 3},
		{"/?limit=7", false, (n + 6) / 7},
	} {
		t.Run(tt.first, func(t *testing.T) {
			contents, pages := walk(t, tt.first, tt.fromBody)
			if pages != tt.pages {
				t.Errorf("%d pages, want %d", pages, tt.pages)
			}
			if len(contents) != n {
				t.Errorf("%d messages listed, want each of %d once", len(contents), n)
			}
			seen := map[string]bool{}
			for _, c := range contents {
				if seen[c] {
					t.Errorf("%q listed twice", c)
				}
				seen[c] = true
			}
			for i := 1; i <= n; i++ {
				if !seen[fmt.Sprintf("m%d", i)] {
					t.Errorf("m%d never listed", i)
				}
			}
		})
	}
}

func TestPaging(t *testing.T) {
	f := newFixture(t, nil)
	execSQL(t, testMigrated(t, f), "INSERT INTO messages (content) SELECT 'm' || g FROM generate_series(1, 250) g")
	got := listContents(t, f.srv.URL)
	if len(got) != store.DefaultPageSize || got[len(got)-1] != "m250" || got[0] != "m151" {
		t.Fatalf("default page: %d items, first %v last %v", len(got), got[0], got[len(got)-1])
	}
	r := do(t, "GET", f.srv.URL+"/?limit=100", "", nil)
	link := r.header.Get("Link")
	if !strings.Contains(link, `rel="next"`) {
		t.Fatalf("Link = %q", link)
	}
	next := strings.TrimSuffix(strings.TrimPrefix(strings.Split(link, ";")[0], "<"), ">")
	page2 := do(t, "GET", f.srv.URL+next, "", nil).json(t)["messages"].([]any)
	if len(page2) != 100 || page2[0] != "m51" || page2[99] != "m150" {
		t.Fatalf("second page %v..%v", page2[0], page2[99])
	}
	r = do(t, "GET", f.srv.URL+"/messages?limit=10&before=11", "", nil)
	body := r.json(t)
	if msgs := body["messages"].([]any); len(msgs) != 10 || body["next"] != nil {
		t.Fatalf("last page: %s", r.body)
	}
}
