package function

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/GoogleCloudPlatform/functions-framework-go/funcframework"
	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/jackc/pgx/v5"

	"example.com/pscmessages/store"
	"example.com/pscmessages/store/localpg"
	"example.com/pscmessages/store/metadatatest"
)

// The package's tests share one throwaway cluster (each test gets its own
// database on it) and one fake metadata server. The production code paths run
// unchanged against both.
var (
	cluster  *localpg.Cluster
	meta     *metadatatest.Server
	metaRole atomic.Value // the role whose password follows the fake's tokens
	// Servers run by functions-framework-go itself, one per FUNCTION_TARGET,
	// exactly as Cloud Run serves the deployed functions.
	frameworkMessages, frameworkIngest string
)

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	home, err := os.MkdirTemp("", "fn-home-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(home)
	// Isolate Google default credentials so only the fake metadata server answers.
	os.Unsetenv("GOOGLE_APPLICATION_CREDENTIALS")
	os.Setenv("HOME", home)
	os.Setenv("CLOUDSDK_CONFIG", home)
	os.Unsetenv("GOOGLE_CLOUD_PROJECT")

	ctx := context.Background()
	cluster, err = localpg.Start(ctx, localpg.Options{Password: "admin-secret", TLS: true})
	if err != nil {
		// Never skip: without PostgreSQL the suite fails, loudly.
		fmt.Fprintln(os.Stderr, "FAIL: cannot start a throwaway PostgreSQL cluster:", err)
		return 1
	}
	defer cluster.Destroy()

	meta, err = metadatatest.Start(metadatatest.Options{OnToken: func(token string) error {
		role, _ := metaRole.Load().(string)
		if role == "" {
			return nil
		}
		return cluster.Exec(ctx, fmt.Sprintf("ALTER ROLE %s PASSWORD '%s'", pgx.Identifier{role}.Sanitize(), token))
	}})
	if err != nil {
		fmt.Fprintln(os.Stderr, "FAIL: fake metadata server:", err)
		return 1
	}
	defer meta.Close()
	os.Setenv("GCE_METADATA_HOST", meta.Host())

	// The shared service (the one init registered) uses its own database.
	url, err := newDatabase(ctx, "shared")
	if err != nil {
		fmt.Fprintln(os.Stderr, "FAIL:", err)
		return 1
	}
	os.Setenv("DATABASE_URL", url)
	if frameworkMessages, err = startFramework("Messages"); err == nil {
		frameworkIngest, err = startFramework("IngestPubSub")
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "FAIL: functions framework:", err)
		return 1
	}
	return m.Run()
}

var dbSeq atomic.Int64

// newDatabase creates an empty database and returns a superuser URL for it.
func newDatabase(ctx context.Context, prefix string) (string, error) {
	name := fmt.Sprintf("%s_%d_%d", prefix, os.Getpid(), dbSeq.Add(1))
	if err := cluster.CreateDatabase(ctx, name); err != nil {
		return "", fmt.Errorf("creating database %s: %w", name, err)
	}
	return cluster.SuperuserURL(name), nil
}

func testDB(t testing.TB) string {
	t.Helper()
	url, err := newDatabase(context.Background(), "t")
	if err != nil {
		t.Fatal(err)
	}
	return url
}

// startFramework serves the registered functions through
// funcframework.Start with FUNCTION_TARGET set, and returns its base URL.
func startFramework(target string) (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	port := fmt.Sprint(l.Addr().(*net.TCPAddr).Port)
	l.Close()
	os.Setenv("FUNCTION_TARGET", target)
	defer os.Unsetenv("FUNCTION_TARGET")
	errc := make(chan error, 1)
	go func() { errc <- funcframework.StartHostPort("127.0.0.1", port) }()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		select {
		case err := <-errc:
			return "", err
		default:
		}
		if c, err := net.Dial("tcp", "127.0.0.1:"+port); err == nil {
			c.Close()
			return "http://127.0.0.1:" + port, nil
		}
	}
	return "", errors.New("framework did not start listening")
}

// fixture is a service with its own environment, captured logs and server.
type fixture struct {
	svc  *service
	srv  *httptest.Server
	logs *syncBuffer
	url  string // database URL (superuser)
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// newFixture starts a service on a fresh database (or the env's DATABASE_URL).
func newFixture(t testing.TB, env map[string]string) *fixture {
	t.Helper()
	f := &fixture{logs: &syncBuffer{}}
	if env == nil {
		env = map[string]string{}
	}
	if _, ok := env["DATABASE_URL"]; !ok && env["DB_HOST"] == "" {
		f.url = testDB(t)
		env["DATABASE_URL"] = f.url
	} else {
		f.url = env["DATABASE_URL"]
	}
	f.svc = newService(func(k string) string { return env[k] }, f.logs)
	f.srv = httptest.NewServer(f.svc)
	t.Cleanup(func() {
		f.srv.Close()
		f.svc.Close()
	})
	return f
}

type response struct {
	status int
	header http.Header
	body   []byte
}

func (r response) json(t testing.TB) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(r.body, &m); err != nil {
		t.Fatalf("body %q is not a JSON object: %v", r.body, err)
	}
	return m
}

func do(t testing.TB, method, url string, body string, header map[string]string) response {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return response{status: resp.StatusCode, header: resp.Header, body: b}
}

var jsonCT = map[string]string{"Content-Type": "application/json"}

func postContent(t testing.TB, base, content string) response {
	t.Helper()
	b, _ := json.Marshal(map[string]string{"content": content})
	return do(t, "POST", base+"/", string(b), jsonCT)
}

func listContents(t testing.TB, base string) []any {
	t.Helper()
	r := do(t, "GET", base+"/", "", nil)
	if r.status != 200 {
		t.Fatalf("GET /: %d %s", r.status, r.body)
	}
	msgs, ok := r.json(t)["messages"].([]any)
	if !ok {
		t.Fatalf("GET / body %s has no messages array", r.body)
	}
	return msgs
}

func countRows(t testing.TB, url, sql string, args ...any) int {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var n int
	if err := conn.QueryRow(context.Background(), sql, args...).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func execSQL(t testing.TB, url, sql string, args ...any) {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(context.Background(), sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// ---- the legacy contract ----

func TestLegacyPostThenGet(t *testing.T) {
	f := newFixture(t, nil)
	r := postContent(t, f.srv.URL, "Hello CloudSQL IAM!")
	if r.status != 200 {
		t.Fatalf("POST: %d %s", r.status, r.body)
	}
	if got := r.json(t)["status"]; got != "Message added!" {
		t.Fatalf("status = %v, want Message added!", got)
	}
	if ct := r.header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type = %q", ct)
	}
	postContent(t, f.srv.URL, "second")
	got := listContents(t, f.srv.URL)
	if len(got) != 2 || got[0] != "Hello CloudSQL IAM!" || got[1] != "second" {
		t.Fatalf("GET / = %v, want both messages oldest first", got)
	}
}

func TestEmptyListIsArray(t *testing.T) {
	f := newFixture(t, nil)
	r := do(t, "GET", f.srv.URL+"/", "", nil)
	if string(bytes.TrimSpace(r.body)) != `{"messages":[]}` {
		t.Fatalf("GET / on an empty table = %s", r.body)
	}
}

func TestBadInput(t *testing.T) {
	f := newFixture(t, map[string]string{"MAX_CONTENT_BYTES": "16", "MAX_BODY_BYTES": "64"})
	cases := []struct {
		name, method, path, ctype, body string
		header                          map[string]string
		status                          int
		allow                           string
	}{
		{name: "no body", method: "POST", path: "/", ctype: "application/json", status: 400},
		{name: "whitespace body", method: "POST", path: "/", ctype: "application/json", body: "  \n", status: 400},
		{name: "invalid JSON", method: "POST", path: "/", ctype: "application/json", body: `{"content":`, status: 400},
		{name: "trailing garbage", method: "POST", path: "/", ctype: "application/json", body: `{"content":"a"} x`, status: 400},
		{name: "JSON array", method: "POST", path: "/", ctype: "application/json", body: `["a"]`, status: 400},
		{name: "JSON string", method: "POST", path: "/", ctype: "application/json", body: `"a"`, status: 400},
		{name: "JSON null", method: "POST", path: "/", ctype: "application/json", body: `null`, status: 400},
		{name: "missing content", method: "POST", path: "/", ctype: "application/json", body: `{"text":"a"}`, status: 400},
		{name: "null content", method: "POST", path: "/", ctype: "application/json", body: `{"content":null}`, status: 400},
		{name: "number content", method: "POST", path: "/", ctype: "application/json", body: `{"content":5}`, status: 400},
		{name: "object content", method: "POST", path: "/", ctype: "application/json", body: `{"content":{}}`, status: 400},
		{name: "empty content", method: "POST", path: "/", ctype: "application/json", body: `{"content":""}`, status: 400},
		{name: "blank content", method: "POST", path: "/", ctype: "application/json", body: `{"content":"  "}`, status: 400},
		{name: "NUL byte", method: "POST", path: "/", ctype: "application/json", body: `{"content":"a\u0000b"}`, status: 400},
		{name: "invalid UTF-8", method: "POST", path: "/", ctype: "application/json", body: "{\"content\":\"\xff\xfe\"}", status: 400},
		{name: "no content type", method: "POST", path: "/", body: `{"content":"a"}`, status: 415},
		{name: "form content type", method: "POST", path: "/", ctype: "application/x-www-form-urlencoded", body: `content=a`, status: 415},
		{name: "text content type", method: "POST", path: "/messages", ctype: "text/plain", body: `{"content":"a"}`, status: 415},
		{name: "latin1 charset", method: "POST", path: "/", ctype: "application/json; charset=latin1", body: `{"content":"a"}`, status: 415},
		{name: "content over limit", method: "POST", path: "/", ctype: "application/json", body: `{"content":"12345678901234567"}`, status: 413},
		{name: "body over limit", method: "POST", path: "/", ctype: "application/json", body: `{"content":"a","pad":"` + strings.Repeat("x", 80) + `"}`, status: 413},
		{name: "bad idempotency key", method: "POST", path: "/", ctype: "application/json", body: `{"content":"a"}`, header: map[string]string{"Idempotency-Key": "has space"}, status: 400},
		{name: "DELETE root", method: "DELETE", path: "/", status: 405, allow: "GET, HEAD, POST"},
		{name: "PUT collection", method: "PUT", path: "/messages", status: 405, allow: "GET, HEAD, POST"},
		{name: "POST item", method: "POST", path: "/messages/1", status: 405, allow: "GET, HEAD, PUT, PATCH, DELETE"},
		{name: "unknown path", method: "GET", path: "/nope", status: 404},
		{name: "non-numeric id", method: "GET", path: "/messages/abc", status: 404},
		{name: "absent id", method: "GET", path: "/messages/424242", status: 404},
		{name: "bad limit", method: "GET", path: "/?limit=0", status: 400},
		{name: "huge limit", method: "GET", path: "/?limit=100000", status: 400},
		{name: "bad before", method: "GET", path: "/messages?before=x", status: 400},
		{name: "PUT without body", method: "PUT", path: "/messages/1", ctype: "application/json", status: 400},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := map[string]string{}
			for k, v := range tc.header {
				h[k] = v
			}
			if tc.ctype != "" {
				h["Content-Type"] = tc.ctype
			}
			r := do(t, tc.method, f.srv.URL+tc.path, tc.body, h)
			if r.status != tc.status {
				t.Fatalf("status = %d, want %d (body %s)", r.status, tc.status, r.body)
			}
			if msg, _ := r.json(t)["error"].(string); msg == "" {
				t.Fatalf("body %s has no error message", r.body)
			}
			if tc.allow != "" && r.header.Get("Allow") != tc.allow {
				t.Fatalf("Allow = %q, want %q", r.header.Get("Allow"), tc.allow)
			}
		})
	}
	if n := countRows(t, f.url, "SELECT count(*) FROM messages"); n != 0 {
		t.Fatalf("bad requests stored %d rows", n)
	}
}

func TestMessagesResource(t *testing.T) {
	f := newFixture(t, nil)
	r := do(t, "POST", f.srv.URL+"/messages", `{"content":"first"}`, jsonCT)
	if r.status != 201 {
		t.Fatalf("create: %d %s", r.status, r.body)
	}
	created := r.json(t)
	loc := r.header.Get("Location")
	if want := fmt.Sprintf("/messages/%v", created["id"]); loc != want {
		t.Fatalf("Location = %q, want %q", loc, want)
	}
	if created["content"] != "first" || created["created_at"] == nil {
		t.Fatalf("created = %v", created)
	}

	r = do(t, "GET", f.srv.URL+loc, "", nil)
	if r.status != 200 || r.json(t)["content"] != "first" {
		t.Fatalf("read: %d %s", r.status, r.body)
	}
	for _, method := range []string{"PUT", "PATCH"} {
		r = do(t, method, f.srv.URL+loc, `{"content":"changed by `+method+`"}`, jsonCT)
		if r.status != 200 || r.json(t)["content"] != "changed by "+method {
			t.Fatalf("%s: %d %s", method, r.status, r.body)
		}
	}
	r = do(t, "GET", f.srv.URL+"/messages", "", nil)
	list := r.json(t)["messages"].([]any)
	if len(list) != 1 || list[0].(map[string]any)["content"] != "changed by PATCH" {
		t.Fatalf("list = %s", r.body)
	}
	if r = do(t, "DELETE", f.srv.URL+loc, "", nil); r.status != 204 {
		t.Fatalf("delete: %d %s", r.status, r.body)
	}
	for _, method := range []string{"GET", "DELETE"} {
		if r = do(t, method, f.srv.URL+loc, "", nil); r.status != 404 {
			t.Fatalf("%s after delete: %d", method, r.status)
		}
	}
	if r = do(t, "PUT", f.srv.URL+loc, `{"content":"x"}`, jsonCT); r.status != 404 {
		t.Fatalf("PUT after delete: %d", r.status)
	}
}

func TestIdempotencyKey(t *testing.T) {
	f := newFixture(t, nil)
	h := map[string]string{"Content-Type": "application/json", "Idempotency-Key": "order-7"}
	first := do(t, "POST", f.srv.URL+"/", `{"content":"once"}`, h)
	again := do(t, "POST", f.srv.URL+"/", `{"content":"once"}`, h)
	if first.status != 200 || again.status != 200 {
		t.Fatalf("statuses %d, %d", first.status, again.status)
	}
	if first.json(t)["id"] != again.json(t)["id"] || again.header.Get("Idempotent-Replayed") != "true" {
		t.Fatalf("retry was not a replay: %s / %s", first.body, again.body)
	}
	if r := do(t, "POST", f.srv.URL+"/", `{"content":"different"}`, h); r.status != 422 {
		t.Fatalf("reused key with other content: %d %s", r.status, r.body)
	}
	// Concurrent retries of one key land in one batch or several: still one row.
	var wg sync.WaitGroup
	h2 := map[string]string{"Content-Type": "application/json", "Idempotency-Key": "burst"}
	for range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if r := do(t, "POST", f.srv.URL+"/messages", `{"content":"burst"}`, h2); r.status != 201 {
				t.Errorf("burst POST: %d %s", r.status, r.body)
			}
		}()
	}
	wg.Wait()
	if n := countRows(t, f.url, "SELECT count(*) FROM messages"); n != 2 {
		t.Fatalf("%d rows, want 2", n)
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

// testMigrated makes sure the fixture's schema exists and returns its URL.
func testMigrated(t testing.TB, f *fixture) string {
	t.Helper()
	listContents(t, f.srv.URL)
	return f.url
}

func TestTutorialTableKeepsRows(t *testing.T) {
	url := testDB(t)
	// The table exactly as the Flask app created and filled it.
	execSQL(t, url, "CREATE TABLE messages (id SERIAL PRIMARY KEY, content TEXT)")
	execSQL(t, url, "INSERT INTO messages (content) VALUES ('from flask'), (NULL), ('another')")
	f := newFixture(t, map[string]string{"DATABASE_URL": url})
	postContent(t, f.srv.URL, "from go")
	got := listContents(t, f.srv.URL)
	want := []any{"from flask", "", "another", "from go"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("GET / = %q, want %q", got, want)
	}
	r := do(t, "GET", f.srv.URL+"/messages/1", "", nil)
	if r.status != 200 || r.json(t)["content"] != "from flask" {
		t.Fatalf("legacy row: %d %s", r.status, r.body)
	}
}

func TestConcurrentColdStarts(t *testing.T) {
	url := testDB(t)
	const instances = 8
	var wg sync.WaitGroup
	for i := range instances {
		f := newFixture(t, map[string]string{"DATABASE_URL": url})
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Each instance's first requests arrive together.
			var inner sync.WaitGroup
			for j := range 4 {
				inner.Add(1)
				go func() {
					defer inner.Done()
					if r := postContent(t, f.srv.URL, fmt.Sprintf("i%d-%d", i, j)); r.status != 200 {
						t.Errorf("instance %d: %d %s", i, r.status, r.body)
					}
				}()
			}
			inner.Wait()
		}()
	}
	wg.Wait()
	if n := countRows(t, url, "SELECT count(*) FROM messages"); n != instances*4 {
		t.Fatalf("%d rows, want %d", n, instances*4)
	}
	if v := countRows(t, url, "SELECT version FROM "+store.VersionTable); v != 3 {
		t.Fatalf("schema version %d", v)
	}
}

// ---- Pub/Sub CloudEvents ----

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

// TestFrameworkEventFormats posts real-shaped deliveries to the functions
// framework serving IngestPubSub, exactly as Cloud Run would, twice each: the
// redelivery must not store a second row.
func TestFrameworkEventFormats(t *testing.T) {
	url := os.Getenv("DATABASE_URL")
	for _, name := range []string{"pubsub_binary.json", "pubsub_structured.json", "pubsub_legacy_push.json"} {
		t.Run(name, func(t *testing.T) {
			fx := loadEventFixture(t, name)
			for attempt := range 2 {
				r := do(t, "POST", frameworkIngest+fx.Path, string(fx.Body), fx.Headers)
				if r.status/100 != 2 {
					t.Fatalf("delivery %d: %d %s", attempt, r.status, r.body)
				}
			}
			if n := countRows(t, url, "SELECT count(*) FROM messages WHERE content = $1", fx.WantContent); n != 1 {
				t.Fatalf("%d rows with %q, want 1", n, fx.WantContent)
			}
		})
	}
	// And the HTTP function through the framework, as deployed.
	r := postContent(t, frameworkMessages, "via framework")
	if r.status != 200 {
		t.Fatalf("POST via framework: %d %s", r.status, r.body)
	}
	if msgs := listContents(t, frameworkMessages); msgs[len(msgs)-1] != "via framework" {
		t.Fatalf("GET via framework: %v", msgs)
	}
}

func pubsubEvent(t testing.TB, id, typ string, data []byte) event.Event {
	t.Helper()
	e := event.New()
	e.SetID(id)
	e.SetSource("//pubsub.googleapis.com/projects/test-project/topics/messages")
	e.SetType(typ)
	payload := map[string]any{"message": map[string]any{"data": base64.StdEncoding.EncodeToString(data), "messageId": id}, "subscription": "projects/test-project/subscriptions/s"}
	if err := e.SetData("application/json", payload); err != nil {
		t.Fatal(err)
	}
	return e
}

func TestIngestPoisonMessages(t *testing.T) {
	f := newFixture(t, map[string]string{"MAX_CONTENT_BYTES": "32"})
	ctx := context.Background()
	cases := []struct {
		name, typ string
		data      []byte
		raw       []byte // event data replacing the envelope
		reason    string
	}{
		{name: "wrong type", typ: "google.cloud.storage.object.v1.finalized", data: []byte("x"), reason: "is not google.cloud.pubsub"},
		{name: "not an envelope", typ: MessagePublishedType, raw: []byte(`[1,2]`), reason: "not a Pub/Sub message"},
		{name: "undecodable base64", typ: MessagePublishedType, raw: []byte(`{"message":{"data":"!!!"}}`), reason: "not a Pub/Sub message"},
		{name: "empty", typ: MessagePublishedType, data: nil, reason: "empty"},
		{name: "not UTF-8", typ: MessagePublishedType, data: []byte{0xff, 0xfe, 0x00}, reason: "UTF-8"},
		{name: "NUL", typ: MessagePublishedType, data: []byte("a\x00b"), reason: "NUL"},
		{name: "too big", typ: MessagePublishedType, data: bytes.Repeat([]byte("x"), 33), reason: "exceeds 32 bytes"},
		{name: "content not string", typ: MessagePublishedType, data: []byte(`{"content": 42}`), reason: "must be a string"},
		{name: "blank content", typ: MessagePublishedType, data: []byte(`{"content": " "}`), reason: "empty"},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := pubsubEvent(t, fmt.Sprintf("poison-%d", i), tc.typ, tc.data)
			if tc.raw != nil {
				e.DataEncoded = tc.raw
			}
			for range 2 { // a redelivery keeps one dead letter
				if err := f.svc.Ingest(ctx, e); err != nil {
					t.Fatalf("poison message returned %v: it would be retried forever", err)
				}
			}
			var reason string
			var n int
			conn, err := pgx.Connect(ctx, f.url)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close(ctx)
			err = conn.QueryRow(ctx, "SELECT count(*) OVER (), reason FROM dead_letters WHERE event_id = $1", e.ID()).Scan(&n, &reason)
			if err != nil || n != 1 || !strings.Contains(reason, tc.reason) {
				t.Fatalf("dead letter: n=%d reason=%q err=%v, want one with %q", n, reason, err, tc.reason)
			}
		})
	}
	if n := countRows(t, f.url, "SELECT count(*) FROM messages"); n != 0 {
		t.Fatalf("poison stored %d messages", n)
	}
}

func TestIngestContentForms(t *testing.T) {
	f := newFixture(t, nil)
	cases := []struct{ data, want string }{
		{`{"content": "json content"}`, "json content"},
		{`plain text`, "plain text"},
		{`{"other": 1}`, `{"other": 1}`},
		{`{not json`, `{not json`},
		{"héllo ✓", "héllo ✓"},
	}
	for i, tc := range cases {
		if err := f.svc.Ingest(context.Background(), pubsubEvent(t, fmt.Sprint("form-", i), MessagePublishedType, []byte(tc.data))); err != nil {
			t.Fatalf("%q: %v", tc.data, err)
		}
	}
	got := listContents(t, f.srv.URL)
	for i, tc := range cases {
		if got[i] != tc.want {
			t.Errorf("message %d = %q, want %q", i, got[i], tc.want)
		}
	}
}

// ---- IAM database authentication, end to end ----

// tokensSeen collects every token the fake issued, to prove none is logged.
var tokensSeen sync.Map

func TestIAMLoginAndTokenRotation(t *testing.T) {
	ctx := context.Background()
	role := store.IAMUser(metadatatest.DefaultEmail) // derived, as in production, from the metadata email
	ident := pgx.Identifier{role}.Sanitize()
	if err := cluster.Exec(ctx, "DROP ROLE IF EXISTS "+ident); err != nil {
		t.Fatal(err)
	}
	if err := cluster.Exec(ctx, "CREATE ROLE "+ident+" LOGIN"); err != nil {
		t.Fatal(err)
	}
	db := fmt.Sprintf("iam_%d", dbSeq.Add(1))
	if err := cluster.Exec(ctx, fmt.Sprintf("CREATE DATABASE %s OWNER %s", db, ident)); err != nil {
		t.Fatal(err)
	}
	metaRole.Store(role)
	t.Cleanup(func() { metaRole.Store("") })
	meta.SetTokenTTL(12 * time.Second) // x/oauth2 treats it as expired 10 s early: ~2 s of use
	t.Cleanup(func() { meta.SetTokenTTL(time.Hour) })

	f := newFixture(t, map[string]string{
		"DB_HOST":      cluster.Host(),
		"DB_PORT":      fmt.Sprint(cluster.Port()),
		"DB_NAME":      db,
		"DB_SSLMODE":   "verify-full",
		"DB_ROOT_CERT": cluster.CAFile,
	})
	before := meta.TokenFetches()
	if r := postContent(t, f.srv.URL, "via IAM"); r.status != 200 {
		t.Fatalf("POST with IAM login: %d %s\nlogs: %s", r.status, r.body, f.logs)
	}
	warm := meta.TokenFetches()
	if warm-before != 1 {
		t.Fatalf("cold start fetched %d tokens, want 1", warm-before)
	}
	for i := range 50 {
		if r := postContent(t, f.srv.URL, fmt.Sprint("warm ", i)); r.status != 200 {
			t.Fatalf("warm POST: %d %s", r.status, r.body)
		}
	}
	listContents(t, f.srv.URL)
	if n := meta.TokenFetches() - warm; n != 0 {
		t.Fatalf("a warm pool fetched %d tokens for 51 requests, want 0", n)
	}

	// The token expires and the role's password rotates to the next one. Open
	// connections stay logged in; new ones must log in with the new token.
	time.Sleep(2500 * time.Millisecond)
	oldToken := meta.LastToken()
	f.svc.db.st.Load().Pool().Reset()
	if r := postContent(t, f.srv.URL, "after rotation"); r.status != 200 {
		t.Fatalf("POST after token rotation: %d %s\nlogs: %s", r.status, r.body, f.logs)
	}
	if meta.LastToken() == oldToken || meta.TokenFetches()-warm != 1 {
		t.Fatalf("rotation fetched %d tokens, want exactly 1 new one", meta.TokenFetches()-warm)
	}
	// The old token is dead: a login with it fails, so the success above used the new one.
	old, err := pgx.Connect(ctx, cluster.URL(role, oldToken, db, "sslmode=require"))
	if err == nil {
		old.Close(ctx)
		t.Fatal("the rotated-out token still logs in")
	}
	if got := listContents(t, f.srv.URL); got[len(got)-1] != "after rotation" {
		t.Fatalf("last message = %v", got[len(got)-1])
	}
	assertNoSecrets(t, f.logs.String(), oldToken, meta.LastToken())
}

func TestIAMMetadataOutageIs503ThenRecovers(t *testing.T) {
	ctx := context.Background()
	role := store.IAMUser(metadatatest.DefaultEmail)
	ident := pgx.Identifier{role}.Sanitize()
	_ = cluster.Exec(ctx, "CREATE ROLE "+ident+" LOGIN") // may exist from another test
	db := fmt.Sprintf("iamout_%d", dbSeq.Add(1))
	if err := cluster.Exec(ctx, fmt.Sprintf("CREATE DATABASE %s OWNER %s", db, ident)); err != nil {
		t.Fatal(err)
	}
	metaRole.Store(role)
	t.Cleanup(func() { metaRole.Store(""); meta.SetFailing(false) })
	meta.SetFailing(true)
	f := newFixture(t, map[string]string{
		"DB_HOST": cluster.Host(), "DB_PORT": fmt.Sprint(cluster.Port()), "DB_NAME": db,
		"DB_USER": role, "DB_SSLMODE": "require", "DB_CONNECT_TIMEOUT": "2s",
	})
	r := postContent(t, f.srv.URL, "during outage")
	if r.status != 503 || r.header.Get("Retry-After") == "" {
		t.Fatalf("POST while tokens fail: %d %s (Retry-After %q)", r.status, r.body, r.header.Get("Retry-After"))
	}
	meta.SetFailing(false)
	deadline := time.Now().Add(20 * time.Second)
	for {
		r = postContent(t, f.srv.URL, "after outage")
		if r.status == 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not recovered: %d %s\nlogs: %s", r.status, r.body, f.logs)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func TestPasswordAuthNeverLogsSecrets(t *testing.T) {
	ctx := context.Background()
	if err := cluster.Exec(ctx, "DROP ROLE IF EXISTS app_pw"); err != nil {
		t.Fatal(err)
	}
	if err := cluster.Exec(ctx, "CREATE ROLE app_pw LOGIN PASSWORD 's3cret-pw'"); err != nil {
		t.Fatal(err)
	}
	db := fmt.Sprintf("pw_%d", dbSeq.Add(1))
	if err := cluster.Exec(ctx, "CREATE DATABASE "+db+" OWNER app_pw"); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"DB_HOST": cluster.Host(), "DB_PORT": fmt.Sprint(cluster.Port()), "DB_NAME": db, "DB_USER": "app_pw", "DB_PASSWORD": "s3cret-pw"}
	f := newFixture(t, env)
	if r := postContent(t, f.srv.URL, "with a password"); r.status != 200 {
		t.Fatalf("password login: %d %s\n%s", r.status, r.body, f.logs)
	}
	env["DB_PASSWORD"] = "wrong-pw-value"
	bad := newFixture(t, env)
	r := postContent(t, bad.srv.URL, "x")
	if r.status != 503 {
		t.Fatalf("wrong password: %d %s", r.status, r.body)
	}
	// A connection string with a password, given as DATABASE_URL, is never echoed either.
	urlWithPw := cluster.URL("app_pw", "wrong-pw-value", db, "sslmode=require")
	viaURL := newFixture(t, map[string]string{"DATABASE_URL": urlWithPw})
	postContent(t, viaURL.srv.URL, "x")
	for _, logs := range []string{f.logs.String(), bad.logs.String() + string(r.body), viaURL.logs.String()} {
		assertNoSecrets(t, logs, "s3cret-pw", "wrong-pw-value", urlWithPw, "admin-secret")
	}
	if !strings.Contains(bad.logs.String(), "opening the database failed") {
		t.Fatalf("the failure was not logged: %s", bad.logs)
	}
}

func assertNoSecrets(t testing.TB, text string, secrets ...string) {
	t.Helper()
	for _, s := range secrets {
		if s != "" && strings.Contains(text, s) {
			t.Fatalf("a secret (%d chars) reached the logs or a response", len(s))
		}
	}
	if strings.Contains(text, metadatatest.TokenPrefix) {
		t.Fatal("an access token reached the logs")
	}
}

// ---- faults ----

// TestDatabaseRestartUnderLoad stops and restarts PostgreSQL under a running
// load: every acknowledged write must be in the table, errors meanwhile must be
// 503s, and the function must recover within seconds by itself.
func TestDatabaseRestartUnderLoad(t *testing.T) {
	ctx := context.Background()
	c := localpg.ForTest(t, localpg.Options{})
	if err := c.CreateDatabase(ctx, "fault"); err != nil {
		t.Fatal(err)
	}
	url := c.SuperuserURL("fault")
	f := newFixture(t, map[string]string{"DATABASE_URL": url, "DB_QUERY_TIMEOUT": "1s", "DB_CONNECT_TIMEOUT": "1s"})
	client := &http.Client{Timeout: 5 * time.Second} // a hang fails the test

	var (
		mu        sync.Mutex
		acked     []string
		n503      int
		restarted atomic.Int64 // unix nanos of the restart
		recovered atomic.Int64 // first success after it
		stop      atomic.Bool
		wg        sync.WaitGroup
	)
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; !stop.Load(); i++ {
				content := fmt.Sprintf("w%d-%d", w, i)
				resp, err := client.Post(f.srv.URL+"/", "application/json", strings.NewReader(`{"content":"`+content+`"}`))
				if err != nil {
					t.Errorf("request failed (hang or crash): %v", err)
					return
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				mu.Lock()
				switch resp.StatusCode {
				case 200:
					acked = append(acked, content)
					if r := restarted.Load(); r != 0 && recovered.Load() == 0 {
						recovered.Store(time.Now().UnixNano())
					}
				case 503:
					n503++
					time.Sleep(50 * time.Millisecond)
				default:
					t.Errorf("status %d during the outage, want 200 or 503", resp.StatusCode)
				}
				mu.Unlock()
			}
		}()
	}
	time.Sleep(time.Second)
	if err := c.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second)
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	restarted.Store(time.Now().UnixNano())
	time.Sleep(4 * time.Second)
	stop.Store(true)
	wg.Wait()

	if n503 == 0 {
		t.Error("no 503 during a 2 s outage")
	}
	if recovered.Load() == 0 {
		t.Fatal("never recovered after the restart")
	}
	took := time.Duration(recovered.Load() - restarted.Load())
	if took > 3*time.Second {
		t.Errorf("recovery took %v", took)
	}
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var missing int
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM unnest($1::text[]) a WHERE NOT EXISTS (SELECT 1 FROM messages WHERE content = a)", acked).Scan(&missing); err != nil {
		t.Fatal(err)
	}
	if missing != 0 {
		t.Fatalf("%d of %d acknowledged writes are missing", missing, len(acked))
	}
	t.Logf("%d acknowledged, %d answered 503, recovered %v after restart", len(acked), n503, took)
}

func TestColdStartWhileDatabaseDown(t *testing.T) {
	ctx := context.Background()
	c := localpg.ForTest(t, localpg.Options{})
	url := c.SuperuserURL("postgres")
	if err := c.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	f := newFixture(t, map[string]string{"DATABASE_URL": url, "DB_CONNECT_TIMEOUT": "1s"})
	start := time.Now()
	r := postContent(t, f.srv.URL, "x")
	if r.status != 503 || r.header.Get("Retry-After") == "" || time.Since(start) > 3*time.Second {
		t.Fatalf("cold start with the database down: %d %s after %v", r.status, r.body, time.Since(start))
	}
	// Callers during the backoff get 503 at once instead of another attempt.
	start = time.Now()
	if r := do(t, "GET", f.srv.URL+"/", "", nil); r.status != 503 || time.Since(start) > 500*time.Millisecond {
		t.Fatalf("during backoff: %d after %v", r.status, time.Since(start))
	}
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(15 * time.Second)
	for postContent(t, f.srv.URL, "back").status != 200 {
		if time.Now().After(deadline) {
			t.Fatalf("not recovered; logs: %s", f.logs)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// ---- logging ----

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

// ---- fuzzing ----

func FuzzDecodeContent(f *testing.F) {
	for _, s := range []string{`{"content":"a"}`, `{"content":""}`, `[]`, `{"content":"\u0000"}`, "{\"content\":\"\xff\"}", `{"content":1}`, `null`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		content, err := decodeContent(body, 64)
		if err != nil {
			var apiErr *apiError
			if !errors.As(err, &apiErr) || apiErr.status/100 != 4 || apiErr.msg == "" {
				t.Fatalf("decodeContent(%q) error %v is not a 4xx with a message", body, err)
			}
			return
		}
		if content == "" || len(content) > 64 || strings.ContainsRune(content, 0) || !json.Valid(body) {
			t.Fatalf("decodeContent(%q) accepted %q", body, content)
		}
	})
}

func FuzzDecodeEvent(f *testing.F) {
	f.Add([]byte(`{"content":"a"}`), MessagePublishedType)
	f.Add([]byte("plain"), MessagePublishedType)
	f.Add([]byte{0xff}, MessagePublishedType)
	f.Add([]byte(`{"content":5}`), "other.type")
	f.Fuzz(func(t *testing.T, data []byte, typ string) {
		e := event.New()
		e.SetID("1")
		e.SetSource("//pubsub.googleapis.com/projects/p/topics/t")
		e.SetType(typ)
		_ = e.SetData("application/json", MessagePublishedData{Message: PubsubMessage{Data: data, MessageID: "1"}})
		content, key, err := decodeEvent(e, 64)
		if err != nil {
			var poison *poisonError
			if !errors.As(err, &poison) || poison.reason == "" {
				t.Fatalf("decodeEvent error %v is not a poison reason", err)
			}
			return
		}
		if content == "" || len(content) > 64 || strings.ContainsRune(content, 0) || key == "" {
			t.Fatalf("decodeEvent accepted %q (key %q)", content, key)
		}
	})
}

// TestConcurrentDeliveries guards against the CloudEvent adapter's habit of
// handing an event to another request's goroutine: every concurrent delivery
// must be answered promptly and store its own message.
func TestConcurrentDeliveries(t *testing.T) {
	fx := loadEventFixture(t, "pubsub_binary.json")
	client := &http.Client{Timeout: 10 * time.Second}
	const n = 200
	var wg sync.WaitGroup
	sem := make(chan struct{}, 32)
	for i := range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			id := fmt.Sprintf("concurrent-%d-%d", os.Getpid(), i)
			body := fmt.Sprintf(`{"message":{"data":%q,"messageId":%q},"subscription":"projects/test-project/subscriptions/s"}`,
				base64.StdEncoding.EncodeToString([]byte(id)), id)
			req, _ := http.NewRequest("POST", frameworkIngest+"/", strings.NewReader(body))
			for k, v := range fx.Headers {
				req.Header.Set(k, v)
			}
			req.Header.Set("ce-id", id)
			resp, err := client.Do(req)
			if err != nil {
				t.Errorf("delivery %d: %v", i, err)
				return
			}
			resp.Body.Close()
			if resp.StatusCode/100 != 2 {
				t.Errorf("delivery %d: %d", i, resp.StatusCode)
			}
		}()
	}
	wg.Wait()
	if got := countRows(t, os.Getenv("DATABASE_URL"), "SELECT count(*) FROM messages WHERE content LIKE $1", fmt.Sprintf("concurrent-%d-%%", os.Getpid())); got != n {
		t.Fatalf("%d rows, want %d", got, n)
	}
}

func TestBadDeliveries(t *testing.T) {
	cases := []struct {
		name, method, body string
		header             map[string]string
		status             int
	}{
		{"GET", "GET", "", nil, 405},
		{"not an event", "POST", `{"hello":"world"}`, jsonCT, 400},
		{"not JSON", "POST", `garbage`, jsonCT, 400},
		{"CloudEvent without required attributes", "POST", `{}`, map[string]string{"Content-Type": "application/json", "ce-id": "1"}, 400},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := do(t, tc.method, frameworkIngest+"/", tc.body, tc.header)
			if r.status != tc.status {
				t.Fatalf("status %d, want %d (%s)", r.status, tc.status, r.body)
			}
			if msg, _ := r.json(t)["error"].(string); msg == "" {
				t.Fatalf("no JSON error in %s", r.body)
			}
		})
	}
}

func TestTopicFromPath(t *testing.T) {
	for path, want := range map[string]string{
		"/projects/p/topics/t":                    "projects/p/topics/t",
		"/IngestPubSub/projects/p/topics/t/extra": "projects/p/topics/t",
		"/":                           "",
		"/projects/p/subscriptions/s": "",
		"/projects//topics/t":         "",
	} {
		if got := topicFromPath(path); got != want {
			t.Errorf("topicFromPath(%q) = %q, want %q", path, got, want)
		}
	}
}

func TestSettingsLimits(t *testing.T) {
	cases := []struct {
		env      map[string]string
		wantVar  string
		wantBody int64
	}{
		{env: map[string]string{}, wantBody: DefaultMaxBodyBytes},
		{env: map[string]string{"MAX_CONTENT_BYTES": "1000000"}, wantBody: 4000000},
		{env: map[string]string{"MAX_CONTENT_BYTES": "100", "MAX_BODY_BYTES": "50"}, wantVar: "MAX_BODY_BYTES"},
		{env: map[string]string{"MAX_CONTENT_BYTES": "0"}, wantVar: "MAX_CONTENT_BYTES"},
	}
	for _, tc := range cases {
		tc.env["DATABASE_URL"] = "postgres://u@h/d"
		s, err := loadSettings(func(k string) string { return tc.env[k] })
		var ce *store.ConfigError
		switch {
		case tc.wantVar != "" && (!errors.As(err, &ce) || ce.Var != tc.wantVar):
			t.Errorf("%v: err = %v, want one naming %s", tc.env, err, tc.wantVar)
		case tc.wantVar == "" && (err != nil || s.maxBodyBytes != tc.wantBody):
			t.Errorf("%v: body limit %d, err %v; want %d", tc.env, s.maxBodyBytes, err, tc.wantBody)
		}
	}
}

// TestCloseDuringOpen closes the service while its first request is opening
// the pool: Close waits for that open and closes what it made, and nothing
// opens another pool afterwards.
func TestCloseDuringOpen(t *testing.T) {
	f := newFixture(t, nil)
	started, release := make(chan struct{}), make(chan struct{})
	var releaseOnce sync.Once
	unblock := func() { releaseOnce.Do(func() { close(release) }) }
	t.Cleanup(unblock) // a failed assertion must not leave the opener stuck
	var opened atomic.Pointer[store.Store]
	realOpen := f.svc.db.open
	f.svc.db.open = func(ctx context.Context) (*store.Store, error) {
		close(started)
		<-release
		st, err := realOpen(ctx)
		opened.Store(st)
		return st, err
	}
	first := make(chan response, 1)
	go func() { first <- postContent(t, f.srv.URL, "racing the close") }()
	<-started
	closed := make(chan struct{})
	go func() { f.svc.Close(); close(closed) }()
	select {
	case <-closed:
		t.Fatal("Close returned while the pool was still opening")
	case <-time.After(100 * time.Millisecond):
	}
	unblock()
	<-closed
	// The request that opened the pool races the close for its write: it is
	// either stored and answered 200, or answered 503.
	switch r := <-first; r.status {
	case http.StatusOK:
		if n := countRows(t, f.url, "SELECT count(*) FROM messages WHERE content = 'racing the close'"); n != 1 {
			t.Fatalf("answered 200 but %d rows stored", n)
		}
	case http.StatusServiceUnavailable:
	default:
		t.Fatalf("the request that opened the pool: %d %s", r.status, r.body)
	}
	st := opened.Load()
	if st == nil {
		t.Fatal("the open did not return a store")
	}
	if err := st.Pool().Ping(context.Background()); err == nil {
		t.Fatal("the pool opened during Close is still open")
	}
	if r := postContent(t, f.srv.URL, "after close"); r.status != http.StatusServiceUnavailable {
		t.Fatalf("POST after Close: %d %s, want 503", r.status, r.body)
	}
}
