package logging

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"
)

// syncBuffer is a log's output, read while handlers may still write to it.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestRepeatedFailuresCollapse: the same failure repeated within 10 s is one
// line; the next after the window says how many there were; a different line
// first reports the ones held back.
func TestRepeatedFailuresCollapse(t *testing.T) {
	var buf syncBuffer
	h := New(&buf, Options{Format: FormatText}).With("path", "/").Handler()
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

// TestEveryLineIsNeverCollapsed: identical warnings logged with a context
// from EveryLine are each written, whatever their attributes.
func TestEveryLineIsNeverCollapsed(t *testing.T) {
	var buf syncBuffer
	log := New(&buf, Options{Format: FormatText})
	ctx := EveryLine(context.Background())
	for range 3 {
		log.Log(ctx, slog.LevelWarn, "event kept in dead_letters", "reason", "no data")
	}
	if n := strings.Count(buf.String(), "\n"); n != 3 {
		t.Fatalf("%d lines for 3 warnings logged with EveryLine:\n%s", n, buf.String())
	}
}

// TestHeldRepeatsAreReportedWhenTheWindowEnds: repeats held back are
// reported when their window ends, without waiting for another line.
// Waiting for the next line to report them would, on a quiet instance,
// never report them.
func TestHeldRepeatsAreReportedWhenTheWindowEnds(t *testing.T) {
	var buf syncBuffer
	text := &textHandler{w: &buf, level: slog.LevelInfo, mu: new(sync.Mutex)}
	log := slog.New(&collapseHandler{next: text, st: &collapseState{window: 50 * time.Millisecond}})
	for range 3 {
		log.Warn("request failed: database unavailable", "error", "connection refused")
	}
	for deadline := time.Now().Add(time.Minute); !strings.Contains(buf.String(), "(repeated 2 times more in"); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no summary of the held repeats without a later line:\n%s", buf.String())
		}
	}
	if n := strings.Count(buf.String(), "\n"); n != 2 {
		t.Fatalf("%d lines, want the first and the summary:\n%s", n, buf.String())
	}
}
