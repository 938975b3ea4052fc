package localrun

import (
	"strings"
	"testing"
	"time"
)

// TestServeSaysWhetherEditsAreServed: before the runner says it is serving,
// one line says whether Messages serves PUT, PATCH and DELETE, following
// HTTP_ROUTES; a runner serving only IngestPubSub says nothing about edits.
func TestServeSaysWhetherEditsAreServed(t *testing.T) {
	c, db := sharedDatabase(t, "edits")
	url := c.URL("postgres", "", db)
	for _, tc := range []struct {
		name string
		env  map[string]string
		want string // "" for no edits line
	}{
		{"default", nil, "edits off: PUT, PATCH and DELETE /messages/{id} answer 405 (HTTP_ROUTES=all serves them)"},
		{"append", map[string]string{"HTTP_ROUTES": "append"}, "edits off: PUT, PATCH and DELETE /messages/{id} answer 405 (HTTP_ROUTES=all serves them)"},
		{"all", map[string]string{"HTTP_ROUTES": "all"}, "edits on: PUT, PATCH and DELETE /messages/{id} change and remove messages (HTTP_ROUTES=all)"},
		{"Messages alone", map[string]string{"HTTP_ROUTES": "all", "FUNCTION_TARGET": "Messages"}, "edits on: PUT, PATCH and DELETE /messages/{id} change and remove messages (HTTP_ROUTES=all)"},
		{"IngestPubSub alone", map[string]string{"FUNCTION_TARGET": "IngestPubSub"}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := map[string]string{"DATABASE_URL": url}
			for k, v := range tc.env {
				env[k] = v
			}
			s := startServeChild(t, psFreePort(t), env)
			select {
			case <-s.ready:
			case <-s.exited:
				t.Fatalf("serve exited early:\n%s", s.stderr.String())
			case <-time.After(60 * time.Second):
				t.Fatal("serve did not start in 60 s")
			}
			out := s.stdout.String()
			before, _, _ := strings.Cut(out, "\nserving ")
			n := strings.Count("\n"+out, "\nedits ")
			switch {
			case tc.want == "" && n != 0:
				t.Errorf("a runner without Messages talks about edits:\n%s", out)
			case tc.want != "" && (n != 1 || !strings.Contains("\n"+before+"\n", "\n"+tc.want+"\n")):
				t.Errorf("stdout does not say %q once before the serving line:\n%s", tc.want, out)
			}
			s.stop(t)
		})
	}
}
