package logging

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"sync"
	"time"
)

// repeatWindow is how long the same failure is collapsed into one line.
const repeatWindow = 10 * time.Second

// collapseHandler writes the first of a run of identical warnings or errors
// (same level, message and error) and counts the rest for repeatWindow: the
// next one after the window says "(repeated N times in 10s)", and one whose
// window ended with some held back is reported as "(repeated N times more
// in ...)" when the window ends (a timer), or earlier when a later line
// closes it. Identical failures of concurrent requests interleave, so up to
// maxCollapsed of them are tracked at once. One failing dependency then
// costs a line per window, not one per request.
//
// A line logged with a context from EveryLine is never collapsed: it
// records one event's outcome (a dead letter), which must be findable by its
// event_id. The logger's With attributes (event_id, path) are not part of
// the key on purpose: with them, a database outage would again cost a line
// per request and per delivery.
type collapseHandler struct {
	next slog.Handler
	st   *collapseState // shared by every logger derived with With
}

// maxCollapsed bounds the failures tracked at once; the oldest goes first.
const maxCollapsed = 32

type collapseState struct {
	mu     sync.Mutex
	runs   map[string]*collapseRun
	window time.Duration // repeatWindow when 0; tests shorten it
}

func (st *collapseState) windowLen() time.Duration {
	if st.window > 0 {
		return st.window
	}
	return repeatWindow
}

type everyLineKey struct{}

// EveryLine returns ctx marked so that a line logged with it is never
// collapsed (see collapseHandler).
func EveryLine(ctx context.Context) context.Context {
	return context.WithValue(ctx, everyLineKey{}, true)
}

// startRun starts a run at first and its timer: what the run holds back is
// reported when its window ends, not only when a later line comes. Called
// with st.mu held.
func (c *collapseHandler) startRun(key string, first time.Time, rec slog.Record, h slog.Handler) *collapseRun {
	run := &collapseRun{first: first, last: first, rec: rec, h: h}
	run.timer = time.AfterFunc(c.st.windowLen(), func() { c.expire(key, run) })
	return run
}

// expire ends run when its window is over, writing what it held back; the
// run may have been closed or restarted by a line meanwhile.
func (c *collapseHandler) expire(key string, run *collapseRun) {
	st := c.st
	st.mu.Lock()
	if st.runs[key] != run {
		st.mu.Unlock()
		return
	}
	delete(st.runs, key)
	held := run.held
	st.mu.Unlock()
	if held > 0 {
		run.h.Handle(context.Background(), run.summary())
	}
}

type collapseRun struct {
	first, last time.Time
	held        int          // lines held back since first
	rec         slog.Record  // the line that started the run
	h           slog.Handler // the handler (with its attributes) that wrote it
	timer       *time.Timer  // ends the run when its window is over
}

// summary is the line that reports what run held back.
func (run *collapseRun) summary() slog.Record {
	r := run.rec.Clone()
	r.Message += fmt.Sprintf(" (repeated %s more in %s)", times(run.held), run.last.Sub(run.first).Round(100*time.Millisecond))
	r.Time = run.last
	return r
}

func (c *collapseHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return c.next.Enabled(ctx, l)
}

func (c *collapseHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &collapseHandler{next: c.next.WithAttrs(as), st: c.st}
}

func (c *collapseHandler) WithGroup(name string) slog.Handler {
	return &collapseHandler{next: c.next.WithGroup(name), st: c.st}
}

func (c *collapseHandler) Handle(ctx context.Context, r slog.Record) error {
	key := ""
	if r.Level >= slog.LevelWarn && ctx.Value(everyLineKey{}) == nil {
		key = r.Level.String() + "\x00" + r.Message
		r.Attrs(func(a slog.Attr) bool {
			if a.Key == "error" || a.Key == "reason" {
				key += "\x00" + a.Value.String()
			}
			return true
		})
	}
	type line struct {
		h slog.Handler
		r slog.Record
	}
	var flush []line
	st := c.st
	st.mu.Lock()
	if st.runs == nil {
		st.runs = make(map[string]*collapseRun)
	}
	// Runs whose window has ended report what they held back, and end.
	var oldestKey string
	for k, run := range st.runs {
		if k == key {
			continue
		}
		if r.Time.Sub(run.first) >= st.windowLen() {
			if run.held > 0 {
				flush = append(flush, line{run.h, run.summary()})
			}
			run.timer.Stop()
			delete(st.runs, k)
		} else if oldestKey == "" || run.first.Before(st.runs[oldestKey].first) {
			oldestKey = k
		}
	}
	suppress := false
	if run := st.runs[key]; key != "" && run != nil {
		if r.Time.Sub(run.first) < st.windowLen() {
			run.held++
			run.last = r.Time
			suppress = true
		} else {
			// The same failure goes on: one line for the window just ended.
			run.timer.Stop()
			st.runs[key] = c.startRun(key, r.Time, run.rec, run.h)
			r.Message += fmt.Sprintf(" (repeated %s in %s)", times(run.held+1), r.Time.Sub(run.first).Round(time.Second))
		}
	} else if key != "" {
		if len(st.runs) >= maxCollapsed && oldestKey != "" {
			old := st.runs[oldestKey]
			if old.held > 0 {
				flush = append(flush, line{old.h, old.summary()})
			}
			old.timer.Stop()
			delete(st.runs, oldestKey)
		}
		st.runs[key] = c.startRun(key, r.Time, r.Clone(), c.next)
	}
	st.mu.Unlock()
	slices.SortFunc(flush, func(a, b line) int { return a.r.Time.Compare(b.r.Time) })
	for _, l := range flush {
		l.h.Handle(ctx, l.r)
	}
	if suppress {
		return nil
	}
	return c.next.Handle(ctx, r)
}

func times(n int) string {
	if n == 1 {
		return "once"
	}
	return strconv.Itoa(n) + " times"
}
