package function

import (
	"encoding/json"
	"net/http/httptest"
	"strings"
	"testing"
)

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
