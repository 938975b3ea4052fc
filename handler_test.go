package function

import (
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
)

// TestHandlerRoutesAsTheFramework: Service.Handler, which the local runner
// serves, routes as functions-framework-go does with and without
// FUNCTION_TARGET, and answers a panic as the framework does.
func TestHandlerRoutesAsTheFramework(t *testing.T) {
	cases := []struct {
		target, path string
		want         string // a fragment of the answer that tells the functions apart
	}{
		{"", "/", `"messages"`},
		{"", "/Messages", `{"error":"not found"}`}, // Messages itself answers: its routes are / and /messages
		{"", "/IngestPubSub", "deliveries are POSTed"},
		{"Messages", "/anything", `{"error":"not found"}`},
		{"Messages", "/messages", `"messages"`},
		{"IngestPubSub", "/", "deliveries are POSTed"},
		{"IngestPubSub", "/projects/p/topics/t", "deliveries are POSTed"},
	}
	cfg, err := ConfigFromEnv(os.Getenv)
	if err != nil {
		t.Fatal(err)
	}
	fn := New(cfg, io.Discard)
	defer fn.svc.Close()
	for _, tc := range cases {
		h, err := fn.Handler(tc.target)
		if err != nil {
			t.Fatal(err)
		}
		srv := httptest.NewServer(h)
		r := do(t, "GET", srv.URL+tc.path, "", nil)
		srv.Close()
		if !strings.Contains(string(r.body), tc.want) {
			t.Errorf("FUNCTION_TARGET=%q GET %s: %d %s, want %q", tc.target, tc.path, r.status, r.body, tc.want)
		}
	}
	if _, err := fn.Handler("Nope"); err == nil || !strings.Contains(err.Error(), "FUNCTION_TARGET") {
		t.Errorf("an unknown target: %v, want an error naming FUNCTION_TARGET", err)
	}
	srv := httptest.NewServer(frameworkWrap(func(http.ResponseWriter, *http.Request) { panic("boom") }, 0))
	defer srv.Close()
	r := do(t, "GET", srv.URL, "", nil)
	if r.status != 500 || r.header.Get("X-Google-Status") != "crash" || strings.Contains(string(r.body), "boom") {
		t.Errorf("a panic: %d %v %s, want 500 with X-Google-Status: crash and no detail", r.status, r.header, r.body)
	}
}

// TestServiceServesItsOwnConfiguration: a Service answers from the
// configuration it was given, read once, whatever the environment says
// afterwards: a runner passes it the database it started instead of
// setting DATABASE_URL for the function to find.
func TestServiceServesItsOwnConfiguration(t *testing.T) {
	cfg, err := ConfigFromEnv(envOf(map[string]string{"DATABASE_URL": "postgres://nobody@127.0.0.1:1/none?sslmode=disable&connect_timeout=1"}))
	if err != nil {
		t.Fatal(err)
	}
	cfg = cfg.WithDatabaseURL(testDB(t))
	t.Setenv("DATABASE_URL", "postgres://nobody@127.0.0.1:1/elsewhere?sslmode=disable&connect_timeout=1")
	fn := New(cfg, io.Discard)
	defer fn.Close()
	h, err := fn.Handler("")
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	defer srv.Close()
	if r := do(t, "POST", srv.URL+"/", `{"content":"from the given configuration"}`, map[string]string{"Content-Type": "application/json"}); r.status != http.StatusOK {
		t.Fatalf("POST: %d %s, want 200 from the database the configuration names", r.status, r.body)
	}
}

// TestZeroConfigIsMisconfigured: a Config not read by ConfigFromEnv names
// no database, and its Service says so instead of panicking.
func TestZeroConfigIsMisconfigured(t *testing.T) {
	fn := New(Config{}, io.Discard)
	defer fn.Close()
	h, err := fn.Handler("Messages")
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	defer srv.Close()
	if r := do(t, "GET", srv.URL+"/", "", nil); r.status != http.StatusInternalServerError || !strings.Contains(string(r.body), "misconfigured") {
		t.Errorf("GET: %d %s, want 500 naming a misconfiguration", r.status, r.body)
	}
}
