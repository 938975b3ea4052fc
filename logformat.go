package function

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"example.com/pscmessages/store"
)

// Log settings. Both are read once, when the process starts; an invalid
// value is also reported by ConfigFromEnv, so `go run ./cmd/pscmessages` refuses it.
const (
	// LogLevelVar is debug, info (the default), warn or error. At debug
	// every request and delivery logs one line.
	LogLevelVar = "LOG_LEVEL"
	// LogFormatVar is json (Cloud Logging's structured lines) or text
	// (short human-readable lines). The default is text when the output is
	// a terminal, json otherwise, as on Cloud Run.
	LogFormatVar = "LOG_FORMAT"
)

// repeatWindow is how long the same failure is collapsed into one line.
const repeatWindow = 10 * time.Second

func parseLogLevel(v string) (slog.Level, error) {
	switch strings.ToLower(strings.TrimSpace(v)) {
	case "debug":
		return slog.LevelDebug, nil
	case "", "info":
		return slog.LevelInfo, nil
	case "warn", "warning":
		return slog.LevelWarn, nil
	case "error":
		return slog.LevelError, nil
	}
	return slog.LevelInfo, &store.ConfigError{Var: LogLevelVar, Msg: "must be debug, info (the default), warn or error"}
}

// parseLogFormat says whether lines are text; "" picks text for a terminal.
func parseLogFormat(v string, w io.Writer) (text bool, err error) {
	switch strings.ToLower(strings.TrimSpace(v)) {
	case "json":
		return false, nil
	case "text":
		return true, nil
	case "":
		return isTerminal(w), nil
	}
	return false, &store.ConfigError{Var: LogFormatVar, Msg: "must be json (Cloud Logging) or text; unset, it is text on a terminal and json otherwise"}
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

// checkLogSettings reports an invalid LOG_LEVEL or LOG_FORMAT.
func checkLogSettings(getenv func(string) string) error {
	if _, err := parseLogLevel(getenv(LogLevelVar)); err != nil {
		return err
	}
	_, err := parseLogFormat(getenv(LogFormatVar), nil)
	return err
}

// newLogger writes JSON lines in Cloud Logging's structured format, or short
// text lines (see LogFormatVar), at LOG_LEVEL and above, collapsing repeats
// of one failure. Invalid settings fall back to the defaults here; the
// configuration check reports them.
func newLogger(getenv func(string) string, w io.Writer) *slog.Logger {
	level, _ := parseLogLevel(getenv(LogLevelVar))
	text, _ := parseLogFormat(getenv(LogFormatVar), w)
	var h slog.Handler
	if text {
		h = &textHandler{w: w, level: level, mu: new(sync.Mutex)}
	} else {
		h = slog.NewJSONHandler(w, &slog.HandlerOptions{Level: level, ReplaceAttr: cloudLoggingAttr})
	}
	return slog.New(&collapseHandler{next: h, st: &collapseState{}})
}

// textHandler writes "15:04:05.000 LEVEL message key=value ..." lines.
// Cloud Logging's trace fields are left out: they mean nothing locally.
type textHandler struct {
	w     io.Writer
	level slog.Level
	attrs []slog.Attr
	mu    *sync.Mutex
}

func (h *textHandler) Enabled(_ context.Context, l slog.Level) bool { return l >= h.level }

func (h *textHandler) WithAttrs(as []slog.Attr) slog.Handler {
	c := *h
	c.attrs = append(append([]slog.Attr(nil), h.attrs...), as...)
	return &c
}

// WithGroup is not used by this package; attributes stay flat.
func (h *textHandler) WithGroup(string) slog.Handler { return h }

func (h *textHandler) Handle(_ context.Context, r slog.Record) error {
	var b bytes.Buffer
	b.WriteString(r.Time.Format("15:04:05.000"))
	// Messages and values may carry what a sender chose (a path, an event
	// id): controls are escaped so that a line cannot be forged, hidden or
	// drive the terminal it is read on.
	fmt.Fprintf(&b, " %-5s %s", levelName(r.Level), EscapeControl(oneLine(r.Message)))
	write := func(a slog.Attr) bool {
		if strings.HasPrefix(a.Key, "logging.googleapis.com/") {
			return true
		}
		v := oneLine(a.Value.Resolve().String())
		if v == "" || strings.ContainsAny(v, " =\"") || needsEscape(v) {
			v = strconv.Quote(v) // which escapes what EscapeControl does
		}
		b.WriteString(" " + a.Key + "=" + v)
		return true
	}
	for _, a := range h.attrs {
		write(a)
	}
	r.Attrs(write)
	b.WriteByte('\n')
	h.mu.Lock()
	defer h.mu.Unlock()
	_, err := h.w.Write(b.Bytes())
	return err
}

func levelName(l slog.Level) string {
	switch {
	case l >= slog.LevelError:
		return "ERROR"
	case l >= slog.LevelWarn:
		return "WARN"
	case l >= slog.LevelInfo:
		return "INFO"
	}
	return "DEBUG"
}

// collapseHandler writes the first of a run of identical warnings or errors
// (same level, message and error) and counts the rest for repeatWindow: the
// next one after the window says "(repeated N times in 10s)", and one whose
// window ended with some held back is reported as "(repeated N times more
// in ...)" when the window ends (a timer), or earlier when a later line
// closes it. Identical failures of concurrent requests interleave, so up to
// maxCollapsed of them are tracked at once. One failing dependency then
// costs a line per window, not one per request.
//
// A line logged with a context from everyLine is never collapsed: it
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

// everyLine returns ctx marked so that a line logged with it is never
// collapsed (see collapseHandler).
func everyLine(ctx context.Context) context.Context {
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

// statusWriter remembers the status a handler answered with, and the error
// it answered, for the request's one debug line.
type statusWriter struct {
	http.ResponseWriter
	status int
	err    string
}

// noteError puts msg on the request's debug line, when there is one.
func noteError(w http.ResponseWriter, msg string) {
	if sw, ok := w.(*statusWriter); ok {
		sw.err = msg
	}
}

// Unwrap lets http.ResponseController reach the connection (read deadlines).
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(p)
}

// trackRequest returns the writer to answer r with and a func to call when
// done, which logs one line for the request at debug level ("POST /messages
// 201 1.2ms"). With debug off it costs nothing.
func (s *service) trackRequest(w http.ResponseWriter, r *http.Request) (http.ResponseWriter, func()) {
	if !s.log.Enabled(r.Context(), slog.LevelDebug) {
		return w, func() {}
	}
	sw := &statusWriter{ResponseWriter: w}
	start := time.Now()
	return sw, func() {
		status := sw.status
		if status == 0 {
			status = http.StatusOK
		}
		attrs := []any{"status", status, "duration", time.Since(start).Round(10 * time.Microsecond).String()}
		if id := r.Header.Get("ce-id"); id != "" {
			attrs = append(attrs, "event_id", logText(id))
		}
		if sw.err != "" {
			attrs = append(attrs, "error", sw.err)
		}
		s.log.Debug(r.Method+" "+r.URL.Path, attrs...)
	}
}
