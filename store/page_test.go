package store_test

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"example.com/pscmessages/store"
)

// TestPagesAreBoundedInBytes: issue 8 item 5. A page of large messages stops
// at MaxPageBytes of content and gives Next; following Next reads every
// message exactly once, newest pages first; a message larger than the
// budget comes alone.
func TestPagesAreBoundedInBytes(t *testing.T) {
	st, _ := openStore(t)
	ctx := context.Background()
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
	if l, err := st.List(ctx, store.Page{Limit: 2, MaxBytes: 10 * size}); err != nil || len(l.Messages) != 1 || l.Next == 0 {
		t.Fatalf("Limit 2 with the huge message first: %d messages, next %d, %v", len(l.Messages), l.Next, err)
	}
	if l, err := st.List(ctx, store.Page{Before: huge.ID, Limit: 3, MaxBytes: 10 * size}); err != nil || len(l.Messages) != 3 || l.Next != huge.ID-3 {
		t.Fatalf("Limit 3: %d messages, next %d, %v", len(l.Messages), l.Next, err)
	}
}
