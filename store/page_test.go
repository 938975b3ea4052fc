package store_test

import (
	"fmt"
	"strconv"
	"strings"
	"testing"

	"example.com/pscmessages/store"
)

// TestPagesAreBoundedInBytes: a page of large messages stops
// at MaxPageBytes of content and gives Next; following Next reads every
// message exactly once, newest pages first; a message larger than the
// budget comes alone.
func TestPagesAreBoundedInBytes(t *testing.T) {
	st, _ := openStore(t)
	ctx := testContext(t)
	const rows, size = 40, 64000
	for i := range rows {
		content := fmt.Sprintf("%03d", i) + strings.Repeat("x", size-3)
		if _, err := st.Add(ctx, content, ""); err != nil {
			t.Fatal(err)
		}
	}
	huge, err := st.Add(ctx, "huge"+strings.Repeat("y", store.MaxPageBytes), "")
	if err != nil {
		t.Fatal(err)
	}
	l, err := st.List(ctx, store.Page{Limit: store.MaxPageSize})
	if err != nil {
		t.Fatal(err)
	}
	if len(l.Messages) != 1 || l.Messages[0].ID != huge.ID || l.Next != huge.ID {
		t.Fatalf("first page: %d messages, next %d; want the huge one alone", len(l.Messages), l.Next)
	}
	var seen []string
	pages := 0
	for before := l.Next; before != 0; pages++ {
		l, err := st.List(ctx, store.Page{Before: before, Limit: store.MaxPageSize})
		if err != nil {
			t.Fatal(err)
		}
		bytes := 0
		var page []string
		for _, m := range l.Messages {
			bytes += len(m.Content)
			page = append(page, m.Content[:3])
		}
		if bytes > store.MaxPageBytes {
			t.Fatalf("page of %d bytes, over %d", bytes, store.MaxPageBytes)
		}
		if l.Next != 0 && len(l.Messages) != store.MaxPageBytes/size {
			t.Fatalf("a page of %d messages of %d bytes stopped early", len(l.Messages), size)
		}
		seen = append(page, seen...)
		before = l.Next
	}
	if pages != 3 || len(seen) != rows {
		t.Fatalf("%d pages, %d messages; want 3 pages, %d messages", pages, len(seen), rows)
	}
	for i, c := range seen {
		if c != fmt.Sprintf("%03d", i) {
			t.Fatalf("message %d is %s: %v", i, c, seen)
		}
	}
	// The row limit still applies under the byte budget.
	if l, err := st.List(ctx, store.PageOfBytes(0, 2, 10*size)); err != nil || len(l.Messages) != 1 || l.Next == 0 {
		t.Fatalf("Limit 2 with the huge message first: %d messages, next %d, %v", len(l.Messages), l.Next, err)
	}
	if l, err := st.List(ctx, store.PageOfBytes(huge.ID, 3, 10*size)); err != nil || len(l.Messages) != 3 || l.Next != huge.ID-3 {
		t.Fatalf("Limit 3: %d messages, next %d, %v", len(l.Messages), l.Next, err)
	}
}

// TestPageLimitBoundary walks every page of tables holding just under, exactly
// and just over a multiple of the page size: no page is larger than its
// limit, none is empty, Next is 0 exactly on the last, and every message is
// listed once, in order. Limits beyond MaxPageSize are clamped.
func TestPageLimitBoundary(t *testing.T) {
	st, url := openStoreWith(t, nil)
	ctx := testContext(t)
	conn := dbConn(t, url)
	const limit = 5
	total := 0
	for _, rows := range []int{0, 1, limit - 1, limit, limit + 1, 2 * limit, 2*limit + 1} {
		t.Run(fmt.Sprintf("%d rows", rows), func(t *testing.T) {
			if _, err := conn.Exec(ctx, "TRUNCATE messages RESTART IDENTITY"); err != nil {
				t.Fatal(err)
			}
			if _, err := conn.Exec(ctx, "INSERT INTO messages (content) SELECT 'm' || g FROM generate_series(1, $1::int) g", rows); err != nil {
				t.Fatal(err)
			}
			var got []string
			pages := 0
			for before := int64(0); ; {
				l, err := st.List(ctx, store.Page{Limit: limit, Before: before})
				if err != nil {
					t.Fatal(err)
				}
				pages++
				if len(l.Messages) > limit || (len(l.Messages) == 0 && rows > 0) {
					t.Fatalf("page %d holds %d messages, limit %d", pages, len(l.Messages), limit)
				}
				page := make([]string, len(l.Messages))
				for i, m := range l.Messages {
					page[i] = m.Content
				}
				got = append(page, got...) // pages go back in time
				if l.Next == 0 {
					break
				}
				if pages > rows {
					t.Fatalf("more pages than rows")
				}
				before = l.Next
			}
			want := make([]string, rows)
			for i := range want {
				want[i] = "m" + strconv.Itoa(i+1)
			}
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Fatalf("pages listed %v, want %v", got, want)
			}
			if wantPages := max(1, (rows+limit-1)/limit); pages != wantPages {
				t.Fatalf("%d pages for %d rows at limit %d, want %d", pages, rows, limit, wantPages)
			}
			total++
		})
	}
	if total != 7 {
		t.Fatalf("%d cases ran", total)
	}
	t.Run("clamped to MaxPageSize", func(t *testing.T) {
		if _, err := conn.Exec(ctx, "TRUNCATE messages RESTART IDENTITY"); err != nil {
			t.Fatal(err)
		}
		if _, err := conn.Exec(ctx, "INSERT INTO messages (content) SELECT 'm' || g FROM generate_series(1, $1::int) g", store.MaxPageSize+1); err != nil {
			t.Fatal(err)
		}
		l, err := st.List(ctx, store.Page{Limit: store.MaxPageSize + 500})
		if err != nil {
			t.Fatal(err)
		}
		if len(l.Messages) > store.MaxPageSize || l.Next == 0 {
			t.Fatalf("limit %d over %d rows: %d messages, next %d", store.MaxPageSize+500, store.MaxPageSize+1, len(l.Messages), l.Next)
		}
		if l, err := st.List(ctx, store.Page{}); err != nil || len(l.Messages) != store.DefaultPageSize || l.Next == 0 {
			t.Fatalf("default page: %d messages, next %d, %v; want %d", len(l.Messages), l.Next, err, store.DefaultPageSize)
		}
	})
}

// TestPagesCutByBytesKeepTheirConnection: a page cut by its byte bound must
// not cost the pool its connection: cancelling the query when the page
// outgrows MaxPageBytes makes pgx close the connection, so each such page
// would cost a new login (20 pages of limit 1000 over rows of 60 KB, about
// 20 logins). Pages stay within their budget meanwhile.
func TestPagesCutByBytesKeepTheirConnection(t *testing.T) {
	st, _ := openStore(t)
	ctx := testContext(t)
	const rows, size = 60, 60_000
	for i := range rows {
		if _, err := st.Add(ctx, fmt.Sprintf("%03d", i)+strings.Repeat("x", size-3), ""); err != nil {
			t.Fatal(err)
		}
	}
	page := func() {
		l, err := st.List(ctx, store.Page{Limit: store.MaxPageSize})
		if err != nil {
			t.Fatal(err)
		}
		if l.Next == 0 || len(l.Messages) != store.MaxPageBytes/size {
			t.Fatalf("page of %d messages, next %d; want %d and more", len(l.Messages), l.Next, store.MaxPageBytes/size)
		}
	}
	page() // the pool's first connection
	conns := st.Pool().Stat().NewConnsCount()
	for range 20 {
		page()
	}
	if n := st.Pool().Stat().NewConnsCount() - conns; n != 0 {
		t.Errorf("20 pages cut by their byte bound made %d new logins, want 0", n)
	}
}
