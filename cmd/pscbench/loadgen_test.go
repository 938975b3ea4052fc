package main

import (
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
)

// TestRawClient checks the benchmark's own HTTP client against net/http's
// server: every framing it must read, reconnection, and status checks.
func TestRawClient(t *testing.T) {
	var conns atomic.Int32
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		switch r.URL.Path {
		case "/length":
			if r.Method != http.MethodPost || string(body) != `{"content":"x"}` || r.Header.Get("Content-Type") != "application/json" {
				http.Error(w, "bad request", http.StatusBadRequest)
				return
			}
			io.WriteString(w, `{"status":"Message added!"}`)
		case "/chunked":
			for range 3 {
				io.WriteString(w, strings.Repeat("y", 5000))
				w.(http.Flusher).Flush()
			}
		case "/close":
			w.Header().Set("Connection", "close")
			io.WriteString(w, "bye")
		case "/missing":
			http.NotFound(w, r)
		}
	}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Start()
	defer srv.Close()

	tests := []struct {
		name      string
		req       loadRequest
		wantErr   string
		wantConns int32 // connections the three requests took
	}{
		{"content-length", loadRequest{method: http.MethodPost, url: srv.URL + "/length", body: []byte(`{"content":"x"}`)}, "", 1},
		{"chunked", loadRequest{method: http.MethodGet, url: srv.URL + "/chunked"}, "", 1},
		{"connection close", loadRequest{method: http.MethodGet, url: srv.URL + "/close"}, "", 3},
		{"unwanted status", loadRequest{method: http.MethodGet, url: srv.URL + "/missing"}, "status 404, want 200", 1},
		{"wanted status", loadRequest{method: http.MethodGet, url: srv.URL + "/missing", want: http.StatusNotFound}, "", 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			send, done, err := rawClient{}.sender(tt.req)
			if err != nil {
				t.Fatal(err)
			}
			defer done()
			conns.Store(0)
			// Several requests in a row: the connection is reused or
			// redialled, and every answer is read whole.
			for i := range 3 {
				err := send(t.Context())
				if tt.wantErr == "" && err != nil {
					t.Fatalf("request %d: %v", i, err)
				}
				if tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
					t.Fatalf("request %d: err = %v, want %q", i, err, tt.wantErr)
				}
			}
			if n := conns.Load(); n != tt.wantConns {
				t.Errorf("%d connections, want %d", n, tt.wantConns)
			}
		})
	}
}
