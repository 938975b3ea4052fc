package function

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// TestCauseTextIsOneLineWithoutTheRepeatedPrefix: the cause of a
// "database unavailable" line drops the sentinel's own prefix, however many
// times the error was wrapped in it, and keeps to one line.
func TestCauseTextIsOneLineWithoutTheRepeatedPrefix(t *testing.T) {
	err := fmt.Errorf("database unavailable: database unavailable: connecting:\n\tdial tcp 127.0.0.1:1: connection refused")
	if got, want := causeText(err), "connecting: dial tcp 127.0.0.1:1: connection refused"; got != want {
		t.Fatalf("causeText = %q, want %q", got, want)
	}
}

// TestDebugLogsOneLinePerRequest: at LOG_LEVEL=debug each request logs one
// line with its status; at the default level a success logs nothing.
func TestDebugLogsOneLinePerRequest(t *testing.T) {
	for _, level := range []string{"debug", ""} {
		logs := &syncBuffer{}
		svc := newService(envOf(map[string]string{"LOG_LEVEL": level, "LOG_FORMAT": "text", "DATABASE_URL": testDB(t)}), logs)
		srv := httptest.NewServer(svc)
		postContent(t, srv.URL, "logged")
		do(t, "GET", srv.URL+"/nowhere", "", nil)
		srv.Close()
		svc.Close()
		got := logs.String()
		if level == "debug" {
			if !regexp.MustCompile(`(?m)DEBUG POST / status=200 duration=\S+$`).MatchString(got) ||
				!regexp.MustCompile(`(?m)DEBUG GET /nowhere status=404 duration=\S+ error="not found"$`).MatchString(got) ||
				strings.Count(got, "\n") != 2 {
				t.Fatalf("LOG_LEVEL=debug:\n%s", got)
			}
		} else if strings.Contains(got, "POST /") {
			t.Fatalf("the default level logged a success:\n%s", got)
		}
	}
}

// TestUnavailableLogHasNoDoubledPrefix: with the database down, neither the
// pool's line nor the request's repeats "database unavailable".
func TestUnavailableLogHasNoDoubledPrefix(t *testing.T) {
	logs := &syncBuffer{}
	svc := newService(envOf(map[string]string{"DATABASE_URL": "postgres://postgres@127.0.0.1:1/x?sslmode=disable&connect_timeout=1"}), logs)
	defer svc.Close()
	srv := httptest.NewServer(svc)
	defer srv.Close()
	if r := postContent(t, srv.URL, "x"); r.status != 503 {
		t.Fatalf("POST with the database down: %d %s", r.status, r.body)
	}
	if strings.Contains(logs.String(), "database unavailable: database unavailable") || strings.Contains(logs.String(), `\n\t`) {
		t.Fatalf("doubled prefix or escaped line breaks:\n%s", logs)
	}
	if !strings.Contains(logs.String(), "connection refused") {
		t.Fatalf("the cause is missing:\n%s", logs)
	}
}

// TestTraceCorrelation: a request's lines carry its trace, from traceparent
// or X-Cloud-Trace-Context, as Cloud Logging correlates it.
func TestTraceCorrelation(t *testing.T) {
	cases := []struct {
		traceparent, cloud, trace, span string
		sampled                         bool
	}{
		{"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "", "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", true},
		{"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00", "", "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", false},
		{"", "105445aa7843bc8bf206b12000100000/1;o=1", "105445aa7843bc8bf206b12000100000", "0000000000000001", true},
		{"garbage", "not-a-trace", "", "", false},
	}
	for _, tc := range cases {
		trace, span, sampled := traceFromHeaders(tc.traceparent, tc.cloud)
		if trace != tc.trace || span != tc.span || sampled != tc.sampled {
			t.Errorf("traceFromHeaders(%q, %q) = %q %q %v", tc.traceparent, tc.cloud, trace, span, sampled)
		}
	}
	logs := &syncBuffer{}
	svc := newService(func(k string) string {
		return map[string]string{"GOOGLE_CLOUD_PROJECT": "p1", "DATABASE_URL": "postgres://127.0.0.1:1/x?connect_timeout=1"}[k]
	}, logs)
	defer svc.Close()
	srv := httptest.NewServer(svc)
	defer srv.Close()
	do(t, "GET", srv.URL+"/", "", map[string]string{"traceparent": cases[0].traceparent})
	var line map[string]any
	if err := json.Unmarshal([]byte(strings.Split(logs.String(), "\n")[1]), &line); err != nil {
		t.Fatalf("log line: %v in %s", err, logs)
	}
	if line["logging.googleapis.com/trace"] != "projects/p1/traces/"+cases[0].trace || line["severity"] != "WARNING" || line["message"] == nil {
		t.Fatalf("log line = %v", line)
	}
}

// TestEveryDeadLetterIsLogged: three different events dead-lettered for the
// same reason within the collapse window are three lines, each with its
// event_id: the collapse key includes the event, or only the first of them
// would be logged and the others' ids lost.
func TestEveryDeadLetterIsLogged(t *testing.T) {
	f := newFixture(t, nil)
	base := ingestServer(t, f)
	for i := range 3 {
		id := fmt.Sprintf("empty-%d", i)
		if r := do(t, "POST", base+"/", eventBody(id, nil, ""), ceHeaders(id, testSource)); r.status != http.StatusNoContent {
			t.Fatalf("%d %s", r.status, r.body)
		}
	}
	logs := f.logs.String()
	if n := strings.Count(logs, "event kept in dead_letters"); n != 3 {
		t.Fatalf("%d dead-letter lines for 3 dead letters:\n%s", n, logs)
	}
	for i := range 3 {
		if !strings.Contains(logs, fmt.Sprintf("empty-%d", i)) {
			t.Errorf("no line names event empty-%d:\n%s", i, logs)
		}
	}
}

// hostileText is every kind of character a sender could use to forge, hide
// or reorder a log line, or to drive the terminal it is read on.
const hostileText = "a\x1b[2J\x1b]0;pwned\x07\vb\fc\x7fd\u0085e\u009bf\u2028g\u2029h\u202ei\u2066j\u200fk\u061cl\nm\rn"

// hostileRunes are the runes of hostileText that must never reach a text line.
var hostileRunes = []rune{0x1b, 0x07, '\v', '\f', 0x7f, 0x85, 0x9b, 0x2028, 0x2029, 0x202e, 0x2066, 0x200f, 0x061c, '\r'}

func checkNoControls(t *testing.T, what, text string) {
	t.Helper()
	for _, r := range hostileRunes {
		if strings.ContainsRune(text, r) {
			t.Errorf("%s carries %U unescaped: %q", what, r, text)
		}
	}
}

// TestTextLogEscapesControls: what a sender controls (a dead letter's event
// id at the default level, a request path at debug) reaches a text log line
// with its controls escaped, one line per record; in JSON the same lines
// stay valid JSON that decode to what was sent.
func TestTextLogEscapesControls(t *testing.T) {
	for _, format := range []string{"text", "json"} {
		t.Run(format, func(t *testing.T) {
			f := newFixture(t, map[string]string{"LOG_FORMAT": format, "LOG_LEVEL": "debug"})
			ingest := ingestServer(t, f)
			// A structured-mode event with a hostile id and no data: kept as a dead letter.
			// The second id has no blank, so nothing else would quote it.
			for _, id := range []string{hostileText, "evil\x1b[31m\u2028\u0085\u202ex"} {
				body, _ := json.Marshal(map[string]any{"specversion": "1.0", "id": id, "source": "//s", "type": MessagePublishedType})
				if r := do(t, "POST", ingest+"/", string(body), map[string]string{"Content-Type": "application/cloudevents+json"}); r.status != http.StatusNoContent {
					t.Fatalf("hostile event: %d %s", r.status, r.body)
				}
			}
			do(t, "GET", f.srv.URL+"/x%1b%5b2J%e2%80%a8y%c2%85z", "", nil)
			logs := f.logs.String()
			if !strings.Contains(logs, "event kept in dead_letters") || !strings.Contains(logs, "GET /x") {
				t.Fatalf("missing lines:\n%s", logs)
			}
			for _, line := range strings.Split(strings.TrimSuffix(logs, "\n"), "\n") {
				if format == "text" {
					checkNoControls(t, "text line", line)
					continue
				}
				var m map[string]any
				if err := json.Unmarshal([]byte(line), &m); err != nil {
					t.Errorf("not one JSON line: %q: %v", line, err)
				}
				if id, ok := m["event_id"]; ok && id != hostileText && id != "evil\x1b[31m\u2028\u0085\u202ex" {
					t.Errorf("event_id = %q, want %q", id, hostileText)
				}
			}
			// Line breaks of any kind (\v, \f, NEL, U+2028, U+2029 too) join
			// the line with spaces, as an error's lines do; the rest is escaped.
			if format == "text" && !strings.Contains(logs, `event_id="a\x1b[2J\x1b]0;pwned\a b c\x7fd e\u009bf g h\u202ei\u2066j\u200fk\u061cl m n"`) {
				t.Errorf("event_id not escaped as Go quotes it:\n%s", logs)
			}
		})
	}
}

// TestKeyCleanupFailureLogsThroughService: a failed cleanup of expired
// idempotency keys is logged by the service's own logger (structured like
// its other lines), not by the process's global one.
func TestKeyCleanupFailureLogsThroughService(t *testing.T) {
	f := newFixture(t, map[string]string{"LOG_FORMAT": "json"})
	if r := do(t, "GET", f.srv.URL+"/", "", nil); r.status != http.StatusOK { // opens the pool
		t.Fatalf("GET: %d %s", r.status, r.body)
	}
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, f.url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, `CREATE FUNCTION refuse_cleanup() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'cleanup refused by a test'; END $$;
		CREATE TRIGGER refuse_cleanup BEFORE DELETE ON idempotency_keys FOR EACH STATEMENT EXECUTE FUNCTION refuse_cleanup()`); err != nil {
		t.Fatal(err)
	}
	if r := do(t, "POST", f.srv.URL+"/", `{"content":"starts a cleanup"}`, jsonCT); r.status != http.StatusOK {
		t.Fatalf("POST: %d %s", r.status, r.body)
	}
	for deadline := time.Now().Add(10 * time.Second); !strings.Contains(f.logs.String(), "deleting expired idempotency keys failed"); {
		if time.Now().After(deadline) {
			t.Fatalf("no cleanup failure in the service's log:\n%s", f.logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, line := range strings.Split(f.logs.String(), "\n") {
		if strings.Contains(line, "deleting expired idempotency keys failed") && !strings.Contains(line, `"severity":"WARNING"`) {
			t.Errorf("cleanup failure not in the service's JSON format: %s", line)
		}
	}
}
