package store

import (
	"slices"
	"strings"
	"testing"
)

// TestMatchInserted covers the id mapping of a batch without relying on the
// order in which PostgreSQL returns rows.
func TestMatchInserted(t *testing.T) {
	key := func(k string) *string { return &k }
	row := func(id int64, content string, k *string) insertedRow {
		return insertedRow{m: Message{ID: id, Content: content}, key: k}
	}
	tests := []struct {
		name    string
		rows    []*writeRequest
		stored  []insertedRow
		wantIDs []int64 // 0 means replayed
		wantErr string
	}{{
		name:    "input order",
		rows:    []*writeRequest{{content: "a"}, {content: "b", key: "k1"}, {content: "c"}},
		stored:  []insertedRow{row(1, "a", nil), row(2, "b", key("k1")), row(3, "c", nil)},
		wantIDs: []int64{1, 2, 3},
	}, {
		name:    "existing keys store nothing",
		rows:    []*writeRequest{{content: "a", key: "old"}, {content: "b"}, {content: "c", key: "old2"}},
		stored:  []insertedRow{row(7, "b", nil)},
		wantIDs: []int64{0, 7, 0},
	}, {
		name:    "reversed",
		rows:    []*writeRequest{{content: "a"}, {content: "b", key: "k1"}, {content: "c"}, {content: "d", key: "old"}},
		stored:  []insertedRow{row(3, "c", nil), row(2, "b", key("k1")), row(1, "a", nil)},
		wantIDs: []int64{1, 2, 3, 0},
	}, {
		name:    "a keyed row returned late is not taken for a replay",
		rows:    []*writeRequest{{content: "x", key: "k1"}, {content: "x", key: "k2"}},
		stored:  []insertedRow{row(2, "x", key("k2")), row(1, "x", key("k1"))},
		wantIDs: []int64{1, 2},
	}, {
		name:    "equal contents are interchangeable",
		rows:    []*writeRequest{{content: "same"}, {content: "other"}, {content: "same"}},
		stored:  []insertedRow{row(5, "other", nil), row(4, "same", nil), row(6, "same", nil)},
		wantIDs: []int64{4, 5, 6},
	}, {
		name:    "a keyless row missing",
		rows:    []*writeRequest{{content: "a"}, {content: "b"}},
		stored:  []insertedRow{row(1, "a", nil)},
		wantErr: "no row",
	}, {
		name:    "a row nobody sent",
		rows:    []*writeRequest{{content: "a"}},
		stored:  []insertedRow{row(1, "a", nil), row(2, "z", nil)},
		wantErr: "unmatched",
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := matchInserted(tt.rows, tt.stored)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var ids []int64
			for i, a := range got {
				ids = append(ids, a.ID)
				if a.Replayed != (a.ID == 0) {
					t.Errorf("row %d: %+v: replayed and id disagree", i, a)
				}
				if !a.Replayed && a.Content != tt.rows[i].content {
					t.Errorf("row %d: content %q, want %q", i, a.Content, tt.rows[i].content)
				}
			}
			if !slices.Equal(ids, tt.wantIDs) {
				t.Fatalf("ids = %v, want %v", ids, tt.wantIDs)
			}
		})
	}
}
