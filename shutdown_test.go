package function

import (
	"context"
	"net/http"
	"testing"
)

// TestRequestRacingShutdownIs503: a request that got the store just before
// shutdown closed it (simulated by closing the store the service holds)
// is answered 503 with Retry-After, not 500.
func TestRequestRacingShutdownIs503(t *testing.T) {
	f := newFixture(t, nil)
	if r := do(t, "GET", f.srv.URL+"/messages", "", nil); r.status != http.StatusOK {
		t.Fatalf("GET: %d %s", r.status, r.body)
	}
	st, err := f.svc.db.get(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	st.Close() // the service still holds it, as a request in flight does
	for _, path := range []string{"/messages", "/messages/1"} {
		r := do(t, "GET", f.srv.URL+path, "", nil)
		if r.status != http.StatusServiceUnavailable || r.header.Get("Retry-After") == "" {
			t.Errorf("GET %s on a closed store: %d %s, want 503 with Retry-After", path, r.status, r.body)
		}
	}
}
