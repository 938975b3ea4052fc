package main

import (
	"strings"
	"testing"
)

// TestServePubSubPortTaken is TestServePortTaken with -pubsub: a taken port
// fails at once, naming the address, before the Pub/Sub side starts, and
// nothing claims to be serving.
func TestServePubSubPortTaken(t *testing.T) {
	port := takenPort(t)
	for _, tt := range []struct {
		name string
		env  map[string]string
		args []string
	}{
		{"both functions", nil, []string{"serve", "-pubsub"}},
		{"IngestPubSub only", map[string]string{"FUNCTION_TARGET": "IngestPubSub"}, []string{"serve", "-pubsub", "-pubsub-concurrency", "4"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			// No database: the port is checked before one would be
			// started. runMain fails the test if the child runs 30 s.
			env := map[string]string{"HOST": "127.0.0.1", "PORT": port, "DATABASE_URL": "postgres://nobody@127.0.0.1:1/none"}
			for k, v := range tt.env {
				env[k] = v
			}
			stdout, stderr, code := runMain(t, env, tt.args...)
			t.Logf("exit %d, stderr: %s", code, stderr)
			if code == 0 {
				t.Fatalf("exited 0 with its port taken\nstdout:\n%s\nstderr:\n%s", stdout, stderr)
			}
			if strings.Contains(stdout, "serving") {
				t.Fatalf("claimed to be serving on a taken port:\n%s", stdout)
			}
			if !strings.Contains(stderr, "address already in use") || !strings.Contains(stderr, "127.0.0.1:"+port) {
				t.Fatalf("stderr does not name the taken port:\n%s", stderr)
			}
		})
	}
}
