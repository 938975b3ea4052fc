package function

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestEveryDeadLetterIsLogged: three different events dead-lettered for the
// same reason within the collapse window are three lines, each with its
// event_id: the collapse key includes the event, or only the first of them
// would be logged and the others' ids lost.
func TestEveryDeadLetterIsLogged(t *testing.T) {
	f := newFixture(t, nil)
	ctx := context.Background()
	for i := range 3 {
		e := pubsubEvent(t, fmt.Sprintf("empty-%d", i), MessagePublishedType, nil)
		if err := f.svc.Ingest(ctx, e); err != nil {
			t.Fatal(err)
		}
	}
	logs := f.logs.String()
	if n := strings.Count(logs, "event kept in dead_letters"); n != 3 {
		t.Fatalf("%d dead-letter lines for 3 dead letters:\n%s", n, logs)
	}
	for i := range 3 {
		if !strings.Contains(logs, fmt.Sprintf("empty-%d", i)) {
			t.Errorf("no line names event empty-%d:\n%s", i, logs)
		}
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
