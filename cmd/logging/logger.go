package logging

import (
	"errors"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
)

// Format is how lines are written.
type Format int

const (
	// FormatAuto is text when the output is a terminal and JSON otherwise,
	// as on Cloud Run. It is the zero Format.
	FormatAuto Format = iota
	// FormatJSON is one JSON object a line, in Cloud Logging's structured
	// format.
	FormatJSON
	// FormatText is "15:04:05.000 LEVEL message key=value ..." lines.
	FormatText
)

// Options says how a logger writes. The zero Options logs at info and above
// in FormatAuto.
type Options struct {
	Level  slog.Level // lines below Level are dropped; default info
	Format Format     // default FormatAuto
}

// ParseLevel reads a level: debug, info, warn (or warning) or error, in any
// case; "" is info.
func ParseLevel(v string) (slog.Level, error) {
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
	return slog.LevelInfo, errors.New("must be debug, info (the default), warn or error")
}

// ParseFormat reads a format: json or text, in any case; "" is FormatAuto.
func ParseFormat(v string) (Format, error) {
	switch strings.ToLower(strings.TrimSpace(v)) {
	case "json":
		return FormatJSON, nil
	case "text":
		return FormatText, nil
	case "":
		return FormatAuto, nil
	}
	return FormatAuto, errors.New("must be json (Cloud Logging) or text; unset, it is text on a terminal and json otherwise")
}

// New returns a logger writing to w as o says, collapsing repeats of one
// failure (see collapseHandler). Each line is one Write to w.
func New(w io.Writer, o Options) *slog.Logger {
	var h slog.Handler
	if o.Format == FormatText || o.Format == FormatAuto && isTerminal(w) {
		h = &textHandler{w: w, level: o.Level, mu: new(sync.Mutex)}
	} else {
		h = slog.NewJSONHandler(w, &slog.HandlerOptions{Level: o.Level, ReplaceAttr: cloudLoggingAttr})
	}
	return slog.New(&collapseHandler{next: h, st: &collapseState{}})
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}
