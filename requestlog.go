package function

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"cloud.google.com/go/compute/metadata"

	"example.com/pscmessages/cmd/logging"
	"example.com/pscmessages/cmd/telemetry"
	"example.com/pscmessages/store"
)

// requestLog is the logger for one request, correlated with its trace.
func (s *service) requestLog(r *http.Request) *slog.Logger {
	traceID, spanID, sampled := traceFromHeaders(r.Header.Get("traceparent"), r.Header.Get("X-Cloud-Trace-Context"))
	traceID, spanID, sampled = telemetry.LocalSpan(r.Context(), traceID, spanID, sampled)
	return s.withTrace(traceID, spanID, sampled).With("method", r.Method, "path", r.URL.Path)
}

func (s *service) withTrace(traceID, spanID string, sampled bool) *slog.Logger {
	if traceID == "" {
		return s.log
	}
	project := s.project.get()
	if project == "" {
		return s.log
	}
	return s.log.With(logging.TraceAttrs(project, traceID, spanID, sampled)...)
}

// traceFromHeaders reads W3C traceparent, falling back to X-Cloud-Trace-Context
// ("TRACE/SPAN;o=1", SPAN in decimal).
func traceFromHeaders(traceparent, cloudTrace string) (traceID, spanID string, sampled bool) {
	if p := strings.Split(traceparent, "-"); len(p) == 4 && len(p[1]) == 32 && len(p[2]) == 16 && len(p[3]) == 2 && isHex(p[1]) && isHex(p[2]) {
		flags, err := strconv.ParseUint(p[3], 16, 8)
		return p[1], p[2], err == nil && flags&1 == 1
	}
	if cloudTrace == "" {
		return "", "", false
	}
	trace, rest, _ := strings.Cut(cloudTrace, "/")
	if len(trace) != 32 || !isHex(trace) {
		return "", "", false
	}
	span, opts, _ := strings.Cut(rest, ";")
	if n, err := strconv.ParseUint(span, 10, 64); err == nil {
		spanID = fmt.Sprintf("%016x", n)
	}
	return trace, spanID, opts == "o=1"
}

func isHex(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F') {
			return false
		}
	}
	return true
}

// projectID finds the project for trace correlation: from the environment, or
// on Cloud Run (K_SERVICE set) from the metadata server, asked once.
type projectID struct {
	getenv func(string) string
	once   sync.Once
	id     string
}

func (p *projectID) get() string {
	p.once.Do(func() {
		for _, name := range []string{"GOOGLE_CLOUD_PROJECT", "GCP_PROJECT", "GCLOUD_PROJECT"} {
			if v := p.getenv(name); v != "" {
				p.id = v
				return
			}
		}
		if p.getenv("K_SERVICE") != "" || p.getenv("GCE_METADATA_HOST") != "" {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			p.id, _ = metadata.ProjectIDWithContext(ctx)
		}
	})
	return p.id
}

// causeText is err's message for a log line whose message already says
// "database unavailable": the sentinel's own prefix is dropped, so the line
// does not read "database unavailable: database unavailable: ...", and line
// breaks become spaces, so a line stays one line in any format.
func causeText(err error) string {
	text := err.Error()
	for {
		rest, ok := strings.CutPrefix(text, store.ErrUnavailable.Error()+": ")
		if !ok {
			break
		}
		text = rest
	}
	return logging.OneLine(text)
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
