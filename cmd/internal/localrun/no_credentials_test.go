package localrun

import (
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestNoGoogleCredentialsIsPermanent: IAM mode (DB_HOST without DB_PASSWORD)
// on a machine with no Google credentials answers 500, not 503 "retry
// later", and logs once what to do, naming the password alternatives.
func TestNoGoogleCredentialsIsPermanent(t *testing.T) {
	home := t.TempDir()
	port := psFreePort(t)
	r := startRunner(t, runnerOptions{process: "TestMainProcess", args: []string{"serve"}, port: port, lifetime: time.Minute,
		env: map[string]string{"HOME": home, "CLOUDSDK_CONFIG": home,
			"DB_HOST": "127.0.0.1", "DB_NAME": "messages", "DB_SSLMODE": "require", "DB_USER": "app@project.iam"},
		unset: []string{"HOME", "CLOUDSDK_CONFIG", "GCE_METADATA_HOST", "LOG_FORMAT", "LOG_LEVEL", "GOOGLE_*", "PUBSUB_*"}})
	select {
	case <-r.ready:
	case <-time.After(30 * time.Second):
		t.Fatalf("not serving after 30 s:\n%s\n%s", r.stdout.String(), r.stderr.String())
	}
	for i := range 4 {
		resp, err := http.Post("http://127.0.0.1:"+port+"/", "application/json", strings.NewReader(`{"content":"x"}`))
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 500 || resp.Header.Get("Retry-After") != "" {
			t.Fatalf("POST %d: %d %s (Retry-After %q), want 500", i, resp.StatusCode, body, resp.Header.Get("Retry-After"))
		}
		time.Sleep(300 * time.Millisecond)
	}
	logs := r.stdout.String() + r.stderr.String()
	if n := strings.Count(logs, "no Google default credentials were found"); n != 1 {
		t.Fatalf("the cause was logged %d times, want once:\n%s", n, logs)
	}
	for _, want := range []string{"gcloud auth application-default login", "DB_PASSWORD", "DB_IAM_AUTH=false"} {
		if !strings.Contains(logs, want) {
			t.Fatalf("the log does not mention %q:\n%s", want, logs)
		}
	}
}
