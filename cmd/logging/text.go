package logging

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"sync"
)

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
	fmt.Fprintf(&b, " %-5s %s", levelName(r.Level), EscapeControl(OneLine(r.Message)))
	write := func(a slog.Attr) bool {
		if strings.HasPrefix(a.Key, cloudLoggingPrefix) {
			return true
		}
		v := OneLine(a.Value.Resolve().String())
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

// OneLine joins a multi-line message (an error's, say) into one line, its
// line breaks and tabs turned into single spaces.
func OneLine(s string) string {
	if !strings.ContainsAny(s, "\n\r\t") {
		return s
	}
	return strings.Join(strings.Fields(s), " ")
}
