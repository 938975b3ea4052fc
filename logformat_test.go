package function

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
	"time"
)

func envOf(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

// TestTextLogLines: LOG_FORMAT=text writes one short line per record, with
// the error on the same line (no literal \n or \t) and no doubled
// "database unavailable" prefix.
func TestTextLogLines(t *testing.T) {
	var buf syncBuffer
	log := newLogger(envOf(map[string]string{"LOG_FORMAT": "text"}), &buf)
	err := fmt.Errorf("database unavailable: database unavailable: connecting:\n\tdial tcp 127.0.0.1:1: connection refused")
	log.With("method", "POST", "path", "/").Warn("request failed: database unavailable", "error", causeText(err))
	line := buf.String()
	want := regexp.MustCompile(`^\d\d:\d\d:\d\d\.\d{3} WARN  request failed: database unavailable method=POST path=/ error="connecting: dial tcp 127.0.0.1:1: connection refused"\n$`)
	if !want.MatchString(line) {
		t.Fatalf("text line = %q", line)
	}
}

// TestLogFormatDefaultsAndLevels: not a terminal means JSON (Cloud Run);
// LOG_LEVEL filters; bad values are configuration errors naming the variable.
func TestLogFormatDefaultsAndLevels(t *testing.T) {
	var buf syncBuffer
	log := newLogger(envOf(nil), &buf)
	log.Debug("hidden at the default level")
	log.Info("shown", "k", "v")
	var m map[string]any
	if err := json.Unmarshal([]byte(buf.String()), &m); err != nil || m["severity"] != "INFO" || m["message"] != "shown" {
		t.Fatalf("default output %q (%v), want one JSON line at INFO", buf.String(), err)
	}
	buf = syncBuffer{}
	log = newLogger(envOf(map[string]string{"LOG_LEVEL": "error", "LOG_FORMAT": "json"}), &buf)
	log.Warn("below error")
	if buf.String() != "" {
		t.Fatalf("LOG_LEVEL=error let a warning through: %q", buf.String())
	}
	for _, tc := range []struct{ name, value, want string }{
		{"LOG_LEVEL", "loud", "LOG_LEVEL: must be debug, info (the default), warn or error"},
		{"LOG_FORMAT", "xml", "LOG_FORMAT: must be json (Cloud Logging) or text"},
	} {
		_, err := loadSettings(envOf(map[string]string{"DATABASE_URL": "postgres://u@127.0.0.1:1/d", tc.name: tc.value}))
		if err == nil || !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("%s=%s: %v, want %q", tc.name, tc.value, err, tc.want)
		}
	}
}

// TestRepeatedFailuresCollapse: the same failure repeated within 10 s is one
// line; the next after the window says how many there were; a different line
// first reports the ones held back.
func TestRepeatedFailuresCollapse(t *testing.T) {
	var buf syncBuffer
	h := newLogger(envOf(map[string]string{"LOG_FORMAT": "text"}), &buf).With("path", "/").Handler()
	t0 := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	rec := func(at time.Duration, level slog.Level, msg, cause string) {
		r := slog.NewRecord(t0.Add(at), level, msg, 0)
		if cause != "" {
			r.AddAttrs(slog.String("error", cause))
		}
		if err := h.Handle(context.Background(), r); err != nil {
			t.Fatal(err)
		}
	}
	const failed, refused = "request failed: database unavailable", "connection refused"
	for i := range 37 {
		rec(time.Duration(i)*250*time.Millisecond, slog.LevelWarn, failed, refused)
	}
	if n := strings.Count(buf.String(), "\n"); n != 1 {
		t.Fatalf("37 identical failures in 9 s wrote %d lines:\n%s", n, buf.String())
	}
	rec(10*time.Second, slog.LevelWarn, failed, refused)
	rec(11*time.Second, slog.LevelWarn, failed, refused)
	// Another failure interleaved does not end the run.
	rec(12*time.Second, slog.LevelWarn, "delivery failed; will be redelivered", "503")
	rec(12500*time.Millisecond, slog.LevelWarn, failed, refused)
	rec(12600*time.Millisecond, slog.LevelWarn, "delivery failed; will be redelivered", "503")
	// Any later line reports what ended runs held back.
	rec(23*time.Second, slog.LevelInfo, "database opened", "")
	lines := strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n")
	want := []string{
		"12:00:00.000 WARN  request failed: database unavailable path=/ error=",
		"12:00:10.000 WARN  request failed: database unavailable (repeated 37 times in 10s) path=/",
		"12:00:12.000 WARN  delivery failed; will be redelivered path=/ error=503",
		"12:00:12.500 WARN  request failed: database unavailable (repeated 2 times more in 2.5s) path=/",
		"12:00:12.600 WARN  delivery failed; will be redelivered (repeated once more in 600ms) path=/",
		"12:00:23.000 INFO  database opened path=/",
	}
	if len(lines) != len(want) {
		t.Fatalf("got %d lines, want %d:\n%s", len(lines), len(want), buf.String())
	}
	for i, w := range want {
		if !strings.Contains(lines[i], w) {
			t.Errorf("line %d = %q, want it to contain %q", i, lines[i], w)
		}
	}
}

// TestDebugLogsOneLinePerRequest: at LOG_LEVEL=debug each request logs one
// line with its status; at the default level a success logs nothing.
func TestDebugLogsOneLinePerRequest(t *testing.T) {
	for _, level := range []string{"debug", ""} {
		logs := &syncBuffer{}
		svc := newService(envOf(map[string]string{"LOG_LEVEL": level, "LOG_FORMAT": "text", "DATABASE_URL": testDB(t)}), logs)
		srv := httptest.NewServer(svc)
		postContent(t, srv.URL, "logged")
		do(t, "GET", srv.URL+"/nowhere", "", nil)
		srv.Close()
		svc.Close()
		got := logs.String()
		if level == "debug" {
			if !regexp.MustCompile(`(?m)DEBUG POST / status=200 duration=\S+$`).MatchString(got) ||
				!regexp.MustCompile(`(?m)DEBUG GET /nowhere status=404 duration=\S+ error="not found"$`).MatchString(got) ||
				strings.Count(got, "\n") != 2 {
				t.Fatalf("LOG_LEVEL=debug:\n%s", got)
			}
		} else if strings.Contains(got, "POST /") {
			t.Fatalf("the default level logged a success:\n%s", got)
		}
	}
}

// TestUnavailableLogHasNoDoubledPrefix: with the database down, neither the
// pool's line nor the request's repeats "database unavailable".
func TestUnavailableLogHasNoDoubledPrefix(t *testing.T) {
	logs := &syncBuffer{}
	svc := newService(envOf(map[string]string{"DATABASE_URL": "postgres://postgres@127.0.0.1:1/x?sslmode=disable&connect_timeout=1"}), logs)
	defer svc.Close()
	srv := httptest.NewServer(svc)
	defer srv.Close()
	if r := postContent(t, srv.URL, "x"); r.status != 503 {
		t.Fatalf("POST with the database down: %d %s", r.status, r.body)
	}
	if strings.Contains(logs.String(), "database unavailable: database unavailable") || strings.Contains(logs.String(), `\n\t`) {
		t.Fatalf("doubled prefix or escaped line breaks:\n%s", logs)
	}
	if !strings.Contains(logs.String(), "connection refused") {
		t.Fatalf("the cause is missing:\n%s", logs)
	}
}
