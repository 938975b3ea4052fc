package function

// Tests that pin the promises the README makes about the two functions, each
// written so that it fails when the promise is broken (issue 13) and guarded
// so that it cannot pass without the scenario it names having happened.

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"example.com/pscmessages/store"
)

// eventServer serves the fixture's IngestPubSub as deployed: one HTTP
// delivery per request.
func eventServer(t testing.TB, f *fixture) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(f.svc.serveEvent))
	t.Cleanup(srv.Close)
	return srv.URL
}

// pushBody is a Pub/Sub push body (the data of a messagePublished event).
// Every message has the same publish time, as a redelivery does, so only the
// topic (or subscription) and the id tell two of them apart.
func pushBody(id string, data []byte, attrs map[string]string, subscription string) string {
	b, _ := json.Marshal(map[string]any{
		"message": map[string]any{"data": base64.StdEncoding.EncodeToString(data), "messageId": id, "attributes": attrs,
			"publishTime": "2026-11-30T12:00:00.123Z"},
		"subscription": subscription,
	})
	return string(b)
}

// binaryHeaders are the headers of a binary-mode messagePublished delivery.
func binaryHeaders(id, topic string) map[string]string {
	return map[string]string{
		"Content-Type":   "application/json",
		"ce-id":          id,
		"ce-specversion": "1.0",
		"ce-type":        MessagePublishedType,
		"ce-source":      "//pubsub.googleapis.com/" + topic,
	}
}

// holdLock holds an EXCLUSIVE lock on table (reads pass, inserts wait) until
// the returned function is called.
func holdLock(t testing.TB, url, table string) (release func()) {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "LOCK TABLE "+table+" IN EXCLUSIVE MODE"); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	release = func() {
		once.Do(func() {
			tx.Rollback(ctx)
			conn.Close(ctx)
		})
	}
	t.Cleanup(release)
	return release
}

// awaitLockWait waits until a statement of url's database waits on a lock:
// the proof that the write reached the database and is held there.
func awaitLockWait(t testing.TB, url string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for countRows(t, url, "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'") == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no statement ever waited on the test's lock: the write never reached the database")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// failInserts makes every insert into table fail with SQLSTATE code, as the
// database would on a deadlock, a full disk and so on. Each attempt draws
// from the sequence <table>_test_failures, which a rollback does not undo,
// so a test can tell that the statement really ran. The returned function
// removes the fault.
func failInserts(t testing.TB, url, table, code string) (attempts func() int, remove func()) {
	t.Helper()
	seq := table + "_test_failures"
	execSQL(t, url, fmt.Sprintf(`CREATE SEQUENCE IF NOT EXISTS %[1]s;
		CREATE OR REPLACE FUNCTION %[2]s_test_fail() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN
			PERFORM nextval('%[1]s');
			RAISE EXCEPTION 'insert into %[2]s refused by the test' USING ERRCODE = '%[3]s';
		END $$;
		DROP TRIGGER IF EXISTS %[2]s_test_fail ON %[2]s;
		CREATE TRIGGER %[2]s_test_fail BEFORE INSERT ON %[2]s FOR EACH ROW EXECUTE FUNCTION %[2]s_test_fail()`, seq, table, code))
	start := sequenceDraws(t, url, seq)
	attempts = func() int { return sequenceDraws(t, url, seq) - start }
	remove = func() { execSQL(t, url, fmt.Sprintf("DROP TRIGGER IF EXISTS %[1]s_test_fail ON %[1]s", table)) }
	t.Cleanup(remove)
	return attempts, remove
}

func sequenceDraws(t testing.TB, url, seq string) int {
	return countRows(t, url, "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM "+seq)
}

// TestExpiredDeliveryIsNotAcked (issue 13 item 1): a delivery whose context
// ends while its row waits to be written is not acknowledged, nor
// dead-lettered; its redelivery stores it exactly once.
func TestExpiredDeliveryIsNotAcked(t *testing.T) {
	f := newFixture(t, map[string]string{"DB_QUERY_TIMEOUT": "1m"})
	testMigrated(t, f)
	release := holdLock(t, f.url, "messages")
	e := pubsubEvent(t, "expired-1", MessagePublishedType, []byte("expired delivery"))
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- f.svc.Ingest(ctx, e) }()
	awaitLockWait(t, f.url)
	cancel()
	select {
	case err := <-errc:
		if err == nil {
			t.Fatal("a delivery whose context ended before its row was written was acknowledged")
		}
	case <-time.After(time.Minute):
		t.Fatal("Ingest did not return after its context ended")
	}
	release()
	if n := countRows(t, f.url, "SELECT count(*) FROM dead_letters"); n != 0 {
		t.Fatalf("an expired delivery of a valid message left %d dead letters", n)
	}
	if err := f.svc.Ingest(context.Background(), e); err != nil {
		t.Fatalf("redelivery: %v", err)
	}
	if n := countRows(t, f.url, "SELECT count(*) FROM messages WHERE content = 'expired delivery'"); n != 1 {
		t.Fatalf("%d rows after the redelivery, want 1", n)
	}
}

// TestExpiredRequestIsNotAnsweredStored (item 1, over HTTP): a POST or a
// delivery whose request context ends while its row waits to be written is
// not answered 2xx, whatever the handler writes for a caller that left; its
// retry stores it exactly once.
func TestExpiredRequestIsNotAnsweredStored(t *testing.T) {
	f := newFixture(t, map[string]string{"DB_QUERY_TIMEOUT": "1m"})
	testMigrated(t, f)
	cases := []struct {
		name    string
		handler http.HandlerFunc
		path    string
		body    string
		header  map[string]string
		content string
	}{
		{"POST /", f.svc.ServeHTTP, "/", `{"content":"expired root post"}`,
			map[string]string{"Content-Type": "application/json", "Idempotency-Key": "expired-root"}, "expired root post"},
		{"POST /messages", f.svc.ServeHTTP, "/messages", `{"content":"expired resource post"}`,
			map[string]string{"Content-Type": "application/json", "Idempotency-Key": "expired-resource"}, "expired resource post"},
		{"IngestPubSub delivery", f.svc.serveEvent, "/", pushBody("expired-delivery", []byte("expired delivery"), nil, "projects/p/subscriptions/s"),
			binaryHeaders("expired-delivery", "projects/p/topics/t"), "expired delivery"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			request := func(ctx context.Context) *http.Request {
				r := httptest.NewRequestWithContext(ctx, "POST", tc.path, strings.NewReader(tc.body))
				for k, v := range tc.header {
					r.Header.Set(k, v)
				}
				return r
			}
			release := holdLock(t, f.url, "messages")
			ctx, cancel := context.WithCancel(context.Background())
			rec := httptest.NewRecorder()
			done := make(chan struct{})
			go func() { tc.handler(rec, request(ctx)); close(done) }()
			awaitLockWait(t, f.url)
			cancel()
			select {
			case <-done:
			case <-time.After(time.Minute):
				t.Fatal("the handler did not return after its context ended")
			}
			if rec.Code/100 == 2 {
				t.Fatalf("a request whose context ended before its row was written was answered %d %s", rec.Code, rec.Body)
			}
			release()
			retry := httptest.NewRecorder()
			tc.handler(retry, request(context.Background()))
			if retry.Code/100 != 2 {
				t.Fatalf("retry: %d %s", retry.Code, retry.Body)
			}
			if n := countRows(t, f.url, "SELECT count(*) FROM messages WHERE content = $1", tc.content); n != 1 {
				t.Fatalf("%d rows after the retry, want 1", n)
			}
		})
	}
	if n := countRows(t, f.url, "SELECT count(*) FROM dead_letters"); n != 0 {
		t.Fatalf("%d dead letters for valid messages", n)
	}
}

// TestDedupeIsPerTopic (item 2): one message id published on two topics is
// two messages, on every delivery path; a redelivery of either stores nothing.
func TestDedupeIsPerTopic(t *testing.T) {
	f := newFixture(t, nil)
	events := eventServer(t, f)
	cases := []struct {
		name    string
		deliver func(t *testing.T, id, content, topicOrSub string)
	}{
		{"decoded CloudEvent", func(t *testing.T, id, content, topic string) {
			e := pubsubEvent(t, id, MessagePublishedType, []byte(content))
			e.SetSource("//pubsub.googleapis.com/" + topic)
			if err := f.svc.Ingest(context.Background(), e); err != nil {
				t.Fatal(err)
			}
		}},
		{"binary-mode delivery", func(t *testing.T, id, content, topic string) {
			r := do(t, "POST", events+"/", pushBody(id, []byte(content), nil, "projects/p/subscriptions/s"), binaryHeaders(id, topic))
			if r.status/100 != 2 {
				t.Fatalf("%d %s", r.status, r.body)
			}
		}},
		{"legacy push, topic in the path", func(t *testing.T, id, content, topic string) {
			r := do(t, "POST", events+"/"+topic, pushBody(id, []byte(content), nil, "projects/p/subscriptions/s"), jsonCT)
			if r.status/100 != 2 {
				t.Fatalf("%d %s", r.status, r.body)
			}
		}},
		{"legacy push, keyed by subscription", func(t *testing.T, id, content, topic string) {
			sub := strings.Replace(topic, "/topics/", "/subscriptions/sub-of-", 1)
			r := do(t, "POST", events+"/", pushBody(id, []byte(content), nil, sub), jsonCT)
			if r.status/100 != 2 {
				t.Fatalf("%d %s", r.status, r.body)
			}
		}},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			id := fmt.Sprintf("same-id-%d", i)
			content := "per topic " + tc.name
			for range 2 { // each delivered twice: redeliveries store nothing
				for _, topic := range []string{"projects/p/topics/a", "projects/p/topics/b"} {
					tc.deliver(t, id, content, topic)
				}
			}
			if n := countRows(t, f.url, "SELECT count(*) FROM messages WHERE content = $1", content); n != 2 {
				t.Fatalf("message id %s on two topics, each delivered twice: %d rows, want 2", id, n)
			}
		})
	}
	if n := countRows(t, f.url, "SELECT count(*) FROM dead_letters"); n != 0 {
		t.Fatalf("%d dead letters", n)
	}
}

// TestUnwritableDeadLetterIsNotAcked (item 3): when a poison message cannot
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

// TestTransientFailureIsNeverDeadLettered (item 4): a valid message whose
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

// TestOversizeDeliveriesAreRefused (item 5): a delivery over the size limit,
// on every path of the deployed IngestPubSub (binary and structured
// CloudEvents, legacy push with and without a topic), is never stored and
// never silently acknowledged: it is refused with 413, or kept as a dead
// letter with its reason. Its message is small and valid, so only the
// delivery's size can refuse it; the same delivery without the padding is
// stored (the guard that each body is otherwise acceptable).
func TestOversizeDeliveriesAreRefused(t *testing.T) {
	url := os.Getenv("DATABASE_URL")
	cfg, err := shared.config()
	if err != nil {
		t.Fatal(err)
	}
	maxEventBytes := int(deliveryLimit(cfg)) // what IngestPubSub decodes at most
	pad := map[string]string{"pad": strings.Repeat("x", maxEventBytes)}
	topic := "projects/test-project/topics/oversize"
	sub := "projects/test-project/subscriptions/oversize"
	cases := []struct {
		name    string
		request func(id string, data []byte, attrs map[string]string) (path, body string, header map[string]string)
	}{
		{"binary CloudEvent", func(id string, data []byte, attrs map[string]string) (string, string, map[string]string) {
			return "/", pushBody(id, data, attrs, sub), binaryHeaders(id, topic)
		}},
		{"structured CloudEvent", func(id string, data []byte, attrs map[string]string) (string, string, map[string]string) {
			b, _ := json.Marshal(map[string]any{
				"specversion": "1.0", "id": id, "type": MessagePublishedType,
				"source": "//pubsub.googleapis.com/" + topic, "datacontenttype": "application/json",
				"data": json.RawMessage(pushBody(id, data, attrs, sub)),
			})
			return "/", string(b), map[string]string{"Content-Type": "application/cloudevents+json"}
		}},
		{"legacy push with a topic path", func(id string, data []byte, attrs map[string]string) (string, string, map[string]string) {
			return "/" + topic, pushBody(id, data, attrs, sub), jsonCT
		}},
		{"legacy push", func(id string, data []byte, attrs map[string]string) (string, string, map[string]string) {
			return "/", pushBody(id, data, attrs, sub), jsonCT
		}},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tag := fmt.Sprintf("%d-%d", os.Getpid(), i)
			// The guard: without the padding, the same delivery is stored.
			path, body, h := tc.request("fits-"+tag, []byte("fits "+tag), nil)
			if r := do(t, "POST", frameworkIngest+path, body, h); r.status/100 != 2 {
				t.Fatalf("the delivery without padding: %d %s", r.status, r.body)
			}
			if n := countRows(t, url, "SELECT count(*) FROM messages WHERE content = $1", "fits "+tag); n != 1 {
				t.Fatalf("the delivery without padding stored %d rows", n)
			}
			id, content := "oversize-"+tag, "oversize "+tag
			path, body, h = tc.request(id, []byte(content), pad)
			if len(body) <= maxEventBytes {
				t.Fatalf("the oversize body is %d bytes, not over %d", len(body), maxEventBytes)
			}
			r := do(t, "POST", frameworkIngest+path, body, h)
			if n := countRows(t, url, "SELECT count(*) FROM messages WHERE content = $1", content); n != 0 {
				t.Fatalf("a %d-byte delivery (limit %d) was stored (answer %d)", len(body), maxEventBytes, r.status)
			}
			switch {
			case r.status == http.StatusRequestEntityTooLarge:
				if msg, _ := r.json(t)["error"].(string); msg == "" {
					t.Fatalf("413 without a JSON error: %s", r.body)
				}
			case r.status/100 == 2:
				var reason string
				conn, err := pgx.Connect(context.Background(), url)
				if err != nil {
					t.Fatal(err)
				}
				defer conn.Close(context.Background())
				err = conn.QueryRow(context.Background(), "SELECT reason FROM dead_letters WHERE event_id = $1", id).Scan(&reason)
				if err != nil || reason == "" {
					t.Fatalf("an oversize delivery was acknowledged (%d) without a dead letter: %v", r.status, err)
				}
			default:
				t.Fatalf("an oversize delivery was answered %d %s; want 413 or a dead letter", r.status, r.body)
			}
		})
	}
}

// TestMigrationsOffRefusesBehindSchema (item 6): with DB_MIGRATE=false the
// function does not migrate a database that is behind, and answers 503
// rather than writing to it.
func TestMigrationsOffRefusesBehindSchema(t *testing.T) {
	url := testDB(t)
	migrated := newFixture(t, map[string]string{"DATABASE_URL": url})
	testMigrated(t, migrated)
	behind := store.SchemaVersion() - 1
	execSQL(t, url, "UPDATE "+store.VersionTable+" SET version = $1", behind)
	f := newFixture(t, map[string]string{"DATABASE_URL": url, "DB_MIGRATE": "false"})
	r := postContent(t, f.srv.URL, "into a schema that is behind")
	if r.status != http.StatusServiceUnavailable {
		t.Fatalf("POST with DB_MIGRATE=false on a schema at version %d of %d: %d %s; want 503", behind, store.SchemaVersion(), r.status, r.body)
	}
	if v := countRows(t, url, "SELECT version FROM "+store.VersionTable); v != int(behind) {
		t.Fatalf("DB_MIGRATE=false migrated the database to version %d", v)
	}
	if n := countRows(t, url, "SELECT count(*) FROM messages"); n != 0 {
		t.Fatalf("%d rows written to a schema that is behind", n)
	}
}

// TestEvery405NamesWhatIsAllowed (item 7): on both functions, in both route
// modes, every 405 carries an Allow header that names methods the route
// does serve (none of which answers 405) and not the one refused.
func TestEvery405NamesWhatIsAllowed(t *testing.T) {
	all := newFixture(t, map[string]string{RoutesVar: RoutesAll})
	methods := []string{"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"}
	servers := []struct {
		name, base string
		paths      []string
	}{
		{"Messages", frameworkMessages, []string{"/", "/messages", "/messages/", "/messages/987654321"}},
		{"Messages with HTTP_ROUTES=all", all.srv.URL, []string{"/", "/messages", "/messages/987654321"}},
		{"IngestPubSub", frameworkIngest, []string{"/", "/projects/p/topics/t"}},
	}
	for _, s := range servers {
		for _, path := range s.paths {
			t.Run(s.name+" "+path, func(t *testing.T) {
				refused := 0
				for _, m := range methods {
					r := do(t, m, s.base+path, "", nil)
					if r.status != http.StatusMethodNotAllowed {
						continue
					}
					refused++
					allow := r.header.Get("Allow")
					if allow == "" {
						t.Errorf("%s %s: 405 without an Allow header", m, path)
						continue
					}
					allowed := strings.Split(allow, ", ")
					if slices.Contains(allowed, m) {
						t.Errorf("%s %s: 405 whose Allow %q names %s", m, path, allow, m)
					}
					if m != "HEAD" {
						if msg, _ := r.json(t)["error"].(string); msg == "" {
							t.Errorf("%s %s: 405 without a JSON error: %s", m, path, r.body)
						}
					}
					for _, a := range allowed {
						if got := do(t, a, s.base+path, "", nil); got.status == http.StatusMethodNotAllowed {
							t.Errorf("%s %s: Allow %q names %s, which answers 405", m, path, allow, a)
						}
					}
				}
				if refused == 0 {
					t.Fatalf("no method of %v was refused on %s: nothing tested", methods, path)
				}
			})
		}
	}
}
