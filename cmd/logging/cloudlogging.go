package logging

import "log/slog"

// cloudLoggingAttr names the JSON handler's level and message as Cloud
// Logging reads them: "severity" (DEBUG, INFO, WARNING, ERROR) and
// "message".
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

// cloudLoggingPrefix begins the keys Cloud Logging reads as fields of the
// entry rather than of its payload; text lines leave them out.
const cloudLoggingPrefix = "logging.googleapis.com/"

// TraceAttrs are the attributes that correlate a line with a trace in
// Cloud Logging: the trace as projects/PROJECT/traces/TRACE_ID, the span and
// whether it was sampled. Pass them to a logger's With; text lines leave
// them out, as they mean nothing locally.
func TraceAttrs(project, traceID, spanID string, sampled bool) []any {
	return []any{
		cloudLoggingPrefix + "trace", "projects/" + project + "/traces/" + traceID,
		cloudLoggingPrefix + "spanId", spanID,
		cloudLoggingPrefix + "trace_sampled", sampled,
	}
}
