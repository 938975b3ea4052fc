package localrun

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"net/http"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	function "example.com/pscmessages"
	"example.com/pscmessages/store"
)

func envelope(id, data string) []byte {
	return []byte(fmt.Sprintf(`{"message":{"data":%q,"messageId":%q,"publishTime":"2026-11-30T12:00:00Z"},"subscription":"projects/p/subscriptions/s"}`,
		base64.StdEncoding.EncodeToString([]byte(data)), id))
}

// TestDeadLettersCommand runs `go run ./cmd/pscmessages deadletters` on real PostgreSQL:
// list, show, replay through IngestPubSub's path (stored once, deleted after),
// a truncated one (as dead_letters may hold from before payloads were kept
// whole) refused, a still-poison one kept, and delete.
func TestDeadLettersCommand(t *testing.T) {
	ctx := t.Context()
	c, db := sharedDatabase(t, "dl")
	url := c.SuperuserURL(db)
	st, err := store.Open(ctx, store.Config{ConnString: url, Migrate: true})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	const source = "//pubsub.googleapis.com/projects/p/topics/t"
	good := store.DeadLetter{EventID: "m1", EventSource: source, EventType: function.MessagePublishedType,
		Reason: "database was down (a test's reason)", Payload: envelope("m1", `{"content":"replayed hello"}`)}
	whole := envelope("m2", strings.Repeat("x", 1000))
	sum := sha256.Sum256(whole)
	poison := store.DeadLetter{EventID: "m3", EventSource: source, EventType: function.MessagePublishedType,
		Reason: "message data is not UTF-8", Payload: envelope("m3", "\xff")}
	for _, d := range []store.DeadLetter{good, poison} {
		if err := st.AddDeadLetter(ctx, d); err != nil {
			t.Fatal(err)
		}
	}
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, `INSERT INTO dead_letters (event_id, event_source, event_type, reason, payload, payload_size, payload_sha256, dedupe_key)
		VALUES ('m2', $1, $2, 'too large', $3, $4, $5, $6)`, source, function.MessagePublishedType, whole[:20], len(whole), sum[:], sum[:]); err != nil {
		t.Fatal(err)
	}
	idOf := func(eventID string) string {
		var id int64
		if err := pgxQueryRow(t, url, "SELECT id FROM dead_letters WHERE event_id = $1", eventID).Scan(&id); err != nil {
			t.Fatalf("dead letter %s: %v", eventID, err)
		}
		return fmt.Sprint(id)
	}
	env := map[string]string{"DATABASE_URL": url}
	dl := func(wantCode int, args ...string) string {
		t.Helper()
		stdout, stderr, code := runMain(t, env, append([]string{"deadletters"}, args...)...)
		if code != wantCode {
			t.Fatalf("deadletters %v: exit %d, want %d\nstdout:\n%s\nstderr:\n%s", args, code, wantCode, stdout, stderr)
		}
		return stdout + stderr
	}
	g, tr, p := idOf("m1"), idOf("m2"), idOf("m3")

	out := dl(0, "list")
	for _, want := range []string{"ID  RECEIVED", g + "   ", "database was down (a test's reason)", fmt.Sprint(len(whole)), "message data is not UTF-8"} {
		if !strings.Contains(out, want) {
			t.Errorf("list lacks %q:\n%s", want, out)
		}
	}
	if out := dl(0, "show", g); !strings.Contains(out, string(good.Payload)) || !strings.Contains(out, "replay:    go run ./cmd/pscmessages deadletters replay "+g) {
		t.Errorf("show %s:\n%s", g, out)
	}
	if out := dl(0, "show", tr); !strings.Contains(out, fmt.Sprintf("replay:    not possible: only the first 20 of its %d bytes were kept", len(whole))) {
		t.Errorf("show %s (truncated):\n%s", tr, out)
	}

	out = dl(1, "replay", g, tr, p)
	for _, want := range []string{
		"dead letter " + g + ": stored as message 1; deleted",
		"dead letter " + tr + ": not replayed: only the first 20 of its",
		"dead letter " + p + ": not replayed, kept: still cannot be stored: message data is not valid UTF-8",
		"2 of 3 dead letters not replayed",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("replay output lacks %q:\n%s", want, out)
		}
	}
	if n := pgxCount(t, url, "SELECT count(*) FROM messages WHERE content = 'replayed hello'"); n != 1 {
		t.Fatalf("%d messages stored by the replay, want 1", n)
	}
	if n := pgxCount(t, url, "SELECT count(*) FROM dead_letters"); n != 2 {
		t.Fatalf("%d dead letters left, want the 2 not replayed", n)
	}

	// The same delivery kept again (as a redelivery might be) replays to
	// the message already stored: the same dedupe key, nothing stored twice.
	if err := st.AddDeadLetter(ctx, good); err != nil {
		t.Fatal(err)
	}
	g2 := idOf("m1")
	if out := dl(0, "replay", g2); !strings.Contains(out, "dead letter "+g2+": already stored as message 1 (nothing stored twice); deleted") {
		t.Errorf("second replay:\n%s", out)
	}
	if n := pgxCount(t, url, "SELECT count(*) FROM messages"); n != 1 {
		t.Fatalf("%d messages after replaying twice, want 1", n)
	}
	if out := dl(0, "delete", p); !strings.Contains(out, "dead letter "+p+": deleted") {
		t.Errorf("delete:\n%s", out)
	}
	if out := dl(1, "show", p); !strings.Contains(out, "no such dead letter") {
		t.Errorf("show after delete:\n%s", out)
	}
	// The id is named once, as in every other line of replay's.
	if out := dl(1, "replay", p); !strings.Contains(out, "dead letter "+p+": no such dead letter\n") || strings.Count(out, "dead letter "+p) != 1 {
		t.Errorf("replay of a deleted id:\n%s", out)
	}
}

// TestDeadLettersLocal: with no DATABASE_URL or DB_HOST the command finds the
// local runner's database, whether `go run ./cmd/pscmessages` is running or not.
func TestDeadLettersLocal(t *testing.T) {
	parent, err := os.MkdirTemp("", "pscmessages-dl-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(parent) })
	if err := os.Chmod(parent, 0o755); err != nil {
		t.Fatal(err)
	}
	pgdata := parent + "/pgdata"
	env := map[string]string{"LOCAL_PGDATA": pgdata}
	if _, stderr, code := runMain(t, env, "deadletters"); code != 1 || !strings.Contains(stderr, "no local database in "+pgdata+": run `go run ./cmd/pscmessages` once") {
		t.Fatalf("before any run: exit %d\n%s", code, stderr)
	}

	base, stop := startMainServe(t, env)
	resp, err := http.Post(base+"/IngestPubSub", "application/json", strings.NewReader("not an event"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 204 {
		t.Fatalf("a poison delivery: %d", resp.StatusCode)
	}
	listed := regexp.MustCompile(`(?m)^1 +\S+ \S+ +12 +neither a CloudEvent`)
	if stdout, stderr, code := runMain(t, env, "deadletters", "list"); code != 0 || !listed.MatchString(stdout) {
		t.Fatalf("list while the runner is up: exit %d\n%s%s", code, stdout, stderr)
	}
	stop()
	stdout, stderr, code := runMain(t, env, "deadletters", "list")
	if code != 0 || !listed.MatchString(stdout) || !strings.Contains(stderr, "started the local PostgreSQL in "+pgdata) {
		t.Fatalf("list with the runner stopped: exit %d\n%s%s", code, stdout, stderr)
	}
}

// startMainServe runs `go run ./cmd/pscmessages` (main, in a child) with env and returns
// its base URL and a func that stops it with SIGTERM.
func startMainServe(t *testing.T, env map[string]string) (string, func()) {
	t.Helper()
	r := startRunner(t, runnerOptions{process: "TestMainProcess", args: []string{"serve"}, env: env, lifetime: 2 * time.Minute,
		unset: []string{"LOCAL_PGDATA", "PUBSUB_*", "LOG_*"}})
	select {
	case <-r.ready:
	case <-time.After(60 * time.Second):
		t.Fatalf("not serving after 60 s:\n%s\n%s", r.stdout.String(), r.stderr.String())
	}
	return r.base, func() { r.stop(t) }
}

func pgxQueryRow(t *testing.T, url, sql string, args ...any) pgx.Row {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn.QueryRow(t.Context(), sql, args...)
}

func pgxCount(t *testing.T, url, sql string) int {
	t.Helper()
	var n int
	if err := pgxQueryRow(t, url, sql).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestDeadLettersOperatorRole: `migrate -deadletters-operator ROLE` gives a
// role what `deadletters` needs (list, replay, delete) and the functions'
// roles cannot read the dead letters.
func TestDeadLettersOperatorRole(t *testing.T) {
	c := migrateCluster(t)
	ctx := t.Context()
	if err := c.Exec(ctx, `CREATE ROLE op LOGIN PASSWORD 'op-pw'; CREATE ROLE fn LOGIN PASSWORD 'fn-pw'`); err != nil {
		t.Fatal(err)
	}
	out, err := migrateRun(t, migrateAdminEnv(c), "-grant", "fn", "-deadletters-operator", "op")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, `GRANT SELECT, DELETE ON TABLE "dead_letters" TO "op"`) {
		t.Fatalf("migrate output:\n%s", out)
	}
	st, err := store.Open(ctx, store.Config{ConnString: c.SuperuserURL("app"), Migrate: true})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if err := st.AddDeadLetter(ctx, store.DeadLetter{EventID: "m1", EventSource: "//pubsub.googleapis.com/projects/p/topics/t",
		EventType: function.MessagePublishedType, Reason: "kept by a test", Payload: envelope("m1", "hi from an operator")}); err != nil {
		t.Fatal(err)
	}
	as := func(role, pw string) map[string]string {
		return map[string]string{"DATABASE_URL": c.URL(role, pw, "app"), "DB_MIGRATE": "false"}
	}
	if _, stderr, code := runMain(t, as("fn", "fn-pw"), "deadletters", "list"); code != 1 || !strings.Contains(stderr, "permission denied") {
		t.Fatalf("a function's role listed the dead letters: exit %d\n%s", code, stderr)
	}
	stdout, stderr, code := runMain(t, as("op", "op-pw"), "deadletters", "replay", "1")
	if code != 0 || !strings.Contains(stdout, "dead letter 1: stored as message 1; deleted") {
		t.Fatalf("replay as the operator: exit %d\n%s%s", code, stdout, stderr)
	}
}
