package function

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
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
	"github.com/jackc/pgx/v5"

	"example.com/pscmessages/store/localpg"
	"example.com/pscmessages/store/localpg/localpgtest"
	"example.com/pscmessages/store/metadatatest"
	"example.com/pscmessages/store/migrations"
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
	if os.Getenv(sigtermChildEnv) != "" {
		os.Exit(sigtermChild())
	}
	// A fuzz worker runs only the fuzz targets, which need no database; the
	// coordinator starts workers again and again, and a cluster for each
	// would take most of a short -fuzztime.
	flag.Parse()
	if f := flag.Lookup("test.fuzzworker"); f != nil && f.Value.String() == "true" {
		os.Exit(m.Run())
	}
	os.Exit(run(m))
}

func run(m *testing.M) int {
	defer localpgtest.Setup()()
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
	cluster, err = localpgtest.StartShared(ctx, localpg.Options{Password: "admin-secret", TLS: true})
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

	if err := makeMigratedTemplate(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "FAIL:", err)
		return 1
	}
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

// migratedTemplate is a database at the latest schema that newDatabase
// copies: most tests want a migrated database, and copying one file by file
// costs the server a fraction of creating a database and migrating it. The
// function's cold start still runs, finding nothing to apply.
const migratedTemplate = "migrated_template"

func makeMigratedTemplate(ctx context.Context) error {
	if err := cluster.CreateDatabase(ctx, migratedTemplate); err != nil {
		return fmt.Errorf("creating the migrated template: %w", err)
	}
	conn, err := pgx.Connect(ctx, cluster.SuperuserURL(migratedTemplate))
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	if err := migrations.Apply(ctx, conn, nil); err != nil {
		return fmt.Errorf("migrating the template: %w", err)
	}
	return nil
}

// newDatabase creates a database at the latest schema, with no messages,
// and returns a superuser URL for it.
func newDatabase(ctx context.Context, prefix string) (string, error) {
	name := fmt.Sprintf("%s_%d_%d", prefix, os.Getpid(), dbSeq.Add(1))
	if err := cluster.CopyDatabase(ctx, name, migratedTemplate); err != nil {
		return "", fmt.Errorf("creating database %s: %w", name, err)
	}
	return cluster.SuperuserURL(name), nil
}

// testDB is a migrated database of the test's own.
func testDB(t testing.TB) string {
	t.Helper()
	url, err := newDatabase(context.Background(), "t")
	if err != nil {
		t.Fatal(err)
	}
	return url
}

// emptyDB is a database without any schema, for tests of what a cold start
// does to one.
func emptyDB(t testing.TB) string {
	t.Helper()
	name := fmt.Sprintf("e_%d_%d", os.Getpid(), dbSeq.Add(1))
	if err := cluster.CreateDatabase(t.Context(), name); err != nil {
		t.Fatalf("creating database %s: %v", name, err)
	}
	return cluster.SuperuserURL(name)
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

// requestTimeout bounds every request a test makes with do: a wait that
// never ends in the service (for the database, or for memory budget) fails
// the test within seconds instead of hanging until go test's own timeout.
const requestTimeout = 30 * time.Second

func do(t testing.TB, method, url string, body string, header map[string]string) response {
	t.Helper()
	return doWithin(t, requestTimeout, method, url, body, header)
}

// doWithin is do with a bound of its own.
func doWithin(t testing.TB, within time.Duration, method, url string, body string, header map[string]string) response {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v (bound %v)", method, url, err, within)
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

// countRows runs a query returning one integer, on the connection to url the
// test keeps (localpgtest.QueryInt): tests poll through it.
func countRows(t testing.TB, url, sql string, args ...any) int {
	t.Helper()
	n, err := localpgtest.QueryInt(t, url, sql, args...)
	if err != nil {
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
