package function

import (
	"net/http"
	"slices"
	"strings"
	"testing"
)

// TestEvery405NamesWhatIsAllowed: on both functions, in both route
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

// TestIngestPubSubRefusesGET: IngestPubSub, which only takes deliveries,
// answers a GET 405 with a JSON error. What is POSTed but is not an event
// is kept as a dead letter instead (TestUndeliverableDeliveriesAreKept).
func TestIngestPubSubRefusesGET(t *testing.T) {
	r := do(t, "GET", frameworkIngest+"/", "", nil)
	if r.status != http.StatusMethodNotAllowed {
		t.Fatalf("status %d, want 405 (%s)", r.status, r.body)
	}
	if msg, _ := r.json(t)["error"].(string); msg == "" {
		t.Fatalf("no JSON error in %s", r.body)
	}
}
