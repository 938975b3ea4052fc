package function

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
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

func envOf(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

const testSource = "//pubsub.googleapis.com/projects/test-project/topics/messages"

// ingestServer serves f's IngestPubSub as Handler does.
func ingestServer(t testing.TB, f *fixture) string {
	t.Helper()
	srv := httptest.NewServer(frameworkWrap(f.svc.serveEvent, 0))
	t.Cleanup(srv.Close)
	return srv.URL
}

// eventBody is a messagePublished payload (the body of a binary-mode event).
func eventBody(id string, data []byte, publishTime string) string {
	msg := map[string]any{"data": base64.StdEncoding.EncodeToString(data)}
	if id != "" {
		msg["messageId"] = id
	}
	if publishTime != "" {
		msg["publishTime"] = publishTime
	}
	b, _ := json.Marshal(map[string]any{"message": msg, "subscription": "projects/test-project/subscriptions/s"})
	return string(b)
}

func ceHeaders(id, source string) map[string]string {
	return map[string]string{
		"Content-Type": "application/json", "ce-id": id, "ce-source": source,
		"ce-specversion": "1.0", "ce-type": MessagePublishedType,
	}
}

type deadLetterRow struct {
	reason  string
	payload []byte
	size    int64
	sum     []byte
}

func deadLetters(t testing.TB, url string) []deadLetterRow {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, "SELECT reason, coalesce(payload, ''), coalesce(payload_size, -1), coalesce(payload_sha256, '') FROM dead_letters ORDER BY id")
	if err != nil {
		t.Fatal(err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (d deadLetterRow, err error) {
		err = r.Scan(&d.reason, &d.payload, &d.size, &d.sum)
		return d, err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

type eventFixture struct {
	Path        string            `json:"path"`
	Headers     map[string]string `json:"headers"`
	Body        json.RawMessage   `json:"body"`
	WantContent string            `json:"want_content"`
}

func loadEventFixture(t testing.TB, name string) eventFixture {
	t.Helper()
	b, err := os.ReadFile("testdata/" + name)
	if err != nil {
		t.Fatal(err)
	}
	var fx eventFixture
	if err := json.Unmarshal(b, &fx); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return fx
}

// testMigrated makes sure the fixture's schema exists and returns its URL.
func testMigrated(t testing.TB, f *fixture) string {
	t.Helper()
	listContents(t, f.srv.URL)
	return f.url
}
