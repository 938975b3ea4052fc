package function

import (
	"fmt"
	"testing"
)

// TestUnwritableDeadLetterIsNotAcked: when a poison message cannot
// be kept in dead_letters, the delivery is answered 5xx so that it is
// redelivered; once the table takes it again, it is kept exactly once.
func TestUnwritableDeadLetterIsNotAcked(t *testing.T) {
	f := newFixture(t, nil)
	testMigrated(t, f)
	events := eventServer(t, f)
	for _, code := range []string{"P0001", "40001", "53100"} {
		t.Run(code, func(t *testing.T) {
			attempts, remove := failInserts(t, f.url, "dead_letters", code)
			id := "poison-" + code
			body := pushBody(id, []byte{0xff, 0xfe}, nil, "projects/p/subscriptions/s") // not UTF-8: never storable
			h := binaryHeaders(id, "projects/p/topics/t")
			r := do(t, "POST", events+"/", body, h)
			if attempts() == 0 {
				t.Fatalf("the dead letter was never attempted (answer %d %s): the delivery was not taken for poison", r.status, r.body)
			}
			if r.status/100 != 5 {
				t.Fatalf("a poison message whose dead letter failed (%s) was answered %d %s; want 5xx so it is redelivered", code, r.status, r.body)
			}
			if n := countRows(t, f.url, "SELECT count(*) FROM dead_letters WHERE event_id = $1", id); n != 0 {
				t.Fatalf("%d dead letters after a failed insert", n)
			}
			remove()
			for range 2 {
				if r := do(t, "POST", events+"/", body, h); r.status/100 != 2 {
					t.Fatalf("redelivery once dead_letters works: %d %s", r.status, r.body)
				}
			}
			if n := countRows(t, f.url, "SELECT count(*) FROM dead_letters WHERE event_id = $1", id); n != 1 {
				t.Fatalf("%d dead letters after two redeliveries, want 1", n)
			}
		})
	}
	if n := countRows(t, f.url, "SELECT count(*) FROM messages"); n != 0 {
		t.Fatalf("poison stored %d messages", n)
	}
}

// TestTransientFailureIsNeverDeadLettered: a valid message whose
// write fails for a transient reason (deadlock, serialization failure, too
// many connections, a canceled statement, a lock held past the query
// deadline) is answered 5xx and redelivered, never kept as a dead letter.
func TestTransientFailureIsNeverDeadLettered(t *testing.T) {
	type fault struct {
		name  string
		apply func(t *testing.T, url string) (check func(t *testing.T), remove func())
	}
	trigger := func(code string) func(t *testing.T, url string) (func(*testing.T), func()) {
		return func(t *testing.T, url string) (func(*testing.T), func()) {
			attempts, remove := failInserts(t, url, "messages", code)
			return func(t *testing.T) {
				if attempts() == 0 {
					t.Fatal("the failing insert never ran")
				}
			}, remove
		}
	}
	faults := []fault{
		{"deadlock 40P01", trigger("40P01")},
		{"serialization 40001", trigger("40001")},
		{"too many connections 53300", trigger("53300")},
		{"statement canceled 57014", trigger("57014")},
		{"lock past the query deadline", func(t *testing.T, url string) (func(*testing.T), func()) {
			release := holdLock(t, url, "messages")
			return func(*testing.T) {}, release
		}},
	}
	for i, fl := range faults {
		t.Run(fl.name, func(t *testing.T) {
			f := newFixture(t, map[string]string{"DB_QUERY_TIMEOUT": "1s"})
			testMigrated(t, f)
			events := eventServer(t, f)
			check, remove := fl.apply(t, f.url)
			id := fmt.Sprintf("transient-%d", i)
			content := "valid message " + fl.name
			body := pushBody(id, []byte(content), nil, "projects/p/subscriptions/s")
			h := binaryHeaders(id, "projects/p/topics/t")
			r := do(t, "POST", events+"/", body, h)
			check(t)
			if r.status/100 != 5 {
				t.Fatalf("a valid message whose write failed transiently was answered %d %s; want 5xx", r.status, r.body)
			}
			if n := countRows(t, f.url, "SELECT count(*) FROM dead_letters"); n != 0 {
				t.Fatalf("a transient failure left %d dead letters", n)
			}
			remove()
			if r := do(t, "POST", events+"/", body, h); r.status/100 != 2 {
				t.Fatalf("redelivery after the fault: %d %s", r.status, r.body)
			}
			if n := countRows(t, f.url, "SELECT count(*) FROM messages WHERE content = $1", content); n != 1 {
				t.Fatalf("%d rows after the redelivery, want 1", n)
			}
			if n := countRows(t, f.url, "SELECT count(*) FROM dead_letters"); n != 0 {
				t.Fatalf("%d dead letters", n)
			}
		})
	}
}
