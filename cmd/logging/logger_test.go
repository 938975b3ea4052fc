package logging

import (
	"encoding/json"
	"log/slog"
	"regexp"
	"strings"
	"testing"
)

// TestTextLines: FormatText writes one short line per record, with a
// multi-line error on the same line (no literal \n or \t) and Cloud
// Logging's trace fields left out.
func TestTextLines(t *testing.T) {
	var buf syncBuffer
	log := New(&buf, Options{Format: FormatText}).With(TraceAttrs("p1", "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", true)...)
	log.With("method", "POST", "path", "/").Warn("request failed: database unavailable", "error", OneLine("connecting:\n\tdial tcp 127.0.0.1:1: connection refused"))
	line := buf.String()
	want := regexp.MustCompile(`^\d\d:\d\d:\d\d\.\d{3} WARN  request failed: database unavailable method=POST path=/ error="connecting: dial tcp 127.0.0.1:1: connection refused"\n$`)
	if !want.MatchString(line) {
		t.Fatalf("text line = %q", line)
	}
}

// TestJSONLinesAreCloudLoggingEntries: FormatJSON writes severity, message
// and the trace fields under the names Cloud Logging reads.
func TestJSONLinesAreCloudLoggingEntries(t *testing.T) {
	var buf syncBuffer
	log := New(&buf, Options{Format: FormatJSON}).With(TraceAttrs("p1", "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", true)...)
	log.Warn("request failed", "path", "/")
	var m map[string]any
	if err := json.Unmarshal([]byte(buf.String()), &m); err != nil {
		t.Fatalf("%q: %v", buf.String(), err)
	}
	for k, v := range map[string]any{
		"severity": "WARNING", "message": "request failed", "path": "/",
		"logging.googleapis.com/trace":         "projects/p1/traces/4bf92f3577b34da6a3ce929d0e0e4736",
		"logging.googleapis.com/spanId":        "00f067aa0ba902b7",
		"logging.googleapis.com/trace_sampled": true,
	} {
		if m[k] != v {
			t.Errorf("%s = %v, want %v (line %s)", k, m[k], v, buf.String())
		}
	}
}

// TestDefaultsAndLevels: the zero Options writes JSON at info when the
// output is not a terminal (as on Cloud Run); a level drops what is below
// it.
func TestDefaultsAndLevels(t *testing.T) {
	var buf syncBuffer
	log := New(&buf, Options{})
	log.Debug("hidden at the default level")
	log.Info("shown", "k", "v")
	var m map[string]any
	if err := json.Unmarshal([]byte(buf.String()), &m); err != nil || m["severity"] != "INFO" || m["message"] != "shown" {
		t.Fatalf("default output %q (%v), want one JSON line at INFO", buf.String(), err)
	}
	for _, format := range []Format{FormatJSON, FormatText} {
		buf = syncBuffer{}
		log = New(&buf, Options{Level: slog.LevelError, Format: format})
		log.Warn("below error")
		if buf.String() != "" {
			t.Fatalf("level error let a warning through: %q", buf.String())
		}
	}
}

// TestParseLevelAndFormat: the names a user writes, in any case; anything
// else is an error that lists what is accepted.
func TestParseLevelAndFormat(t *testing.T) {
	for in, want := range map[string]slog.Level{"": slog.LevelInfo, "DEBUG": slog.LevelDebug, " info ": slog.LevelInfo, "warning": slog.LevelWarn, "Warn": slog.LevelWarn, "error": slog.LevelError} {
		if got, err := ParseLevel(in); got != want || err != nil {
			t.Errorf("ParseLevel(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	if _, err := ParseLevel("loud"); err == nil || !strings.HasPrefix(err.Error(), "must be debug, info (the default), warn or error") {
		t.Errorf("ParseLevel(loud): %v", err)
	}
	for in, want := range map[string]Format{"": FormatAuto, "JSON": FormatJSON, "text": FormatText} {
		if got, err := ParseFormat(in); got != want || err != nil {
			t.Errorf("ParseFormat(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	if _, err := ParseFormat("xml"); err == nil || !strings.HasPrefix(err.Error(), "must be json (Cloud Logging) or text") {
		t.Errorf("ParseFormat(xml): %v", err)
	}
}
