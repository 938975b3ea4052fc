package function

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestHandlerRoutesAsTheFramework: function.Handler, which the local runner
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
	for _, tc := range cases {
		h, err := Handler(tc.target)
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
	if _, err := Handler("Nope"); err == nil || !strings.Contains(err.Error(), "FUNCTION_TARGET") {
		t.Errorf("an unknown target: %v, want an error naming FUNCTION_TARGET", err)
	}
	srv := httptest.NewServer(frameworkWrap(func(http.ResponseWriter, *http.Request) { panic("boom") }, 0))
	defer srv.Close()
	r := do(t, "GET", srv.URL, "", nil)
	if r.status != 500 || r.header.Get("X-Google-Status") != "crash" || strings.Contains(string(r.body), "boom") {
		t.Errorf("a panic: %d %v %s, want 500 with X-Google-Status: crash and no detail", r.status, r.header, r.body)
	}
}
