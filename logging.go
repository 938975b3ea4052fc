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

	"example.com/pscmessages/store"
)

func cloudLoggingAttr(groups []string, a slog.Attr) slog.Attr {
	if len(groups) > 0 {
		return a
	}
	switch a.Key {
	case slog.MessageKey:
		a.Key = "message"
	case slog.LevelKey:
		a.Key = "severity"
		switch level := a.Value.Any().(slog.Level); {
		case level >= slog.LevelError:
			a.Value = slog.StringValue("ERROR")
		case level >= slog.LevelWarn:
			a.Value = slog.StringValue("WARNING")
		case level >= slog.LevelInfo:
			a.Value = slog.StringValue("INFO")
		default:
			a.Value = slog.StringValue("DEBUG")
		}
	}
	return a
}

// requestLog is the logger for one request, correlated with its trace.
func (s *service) requestLog(r *http.Request) *slog.Logger {
	traceID, spanID, sampled := traceFromHeaders(r.Header.Get("traceparent"), r.Header.Get("X-Cloud-Trace-Context"))
	traceID, spanID, sampled = localSpan(r.Context(), traceID, spanID, sampled)
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
	return s.log.With(
		"logging.googleapis.com/trace", "projects/"+project+"/traces/"+traceID,
		"logging.googleapis.com/spanId", spanID,
		"logging.googleapis.com/trace_sampled", sampled)
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
	return oneLine(text)
}

// oneLine joins a multi-line message into one line.
func oneLine(s string) string {
	if !strings.ContainsAny(s, "\n\r\t") {
		return s
	}
	return strings.Join(strings.Fields(s), " ")
}
