package telemetry

import (
	"context"
	"net/http"
	"strconv"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// The HTTP server span of each request and the request-duration metric,
// made here rather than by a general middleware because they run on every
// request, sampled or not: an unsampled request pays for a span start, a
// status-capturing writer and one histogram record with an attribute set
// made once per method, route and status.
//
// The span continues the caller's trace: a valid traceparent (with its
// tracestate), else X-Cloud-Trace-Context; the headers are parsed only when
// present. It is named "METHOD ROUTE" and carries the HTTP semantic
// conventions' attributes that are bounded and say nothing of content: the
// method (_OTHER for one outside the standard set), the route template and
// the status. Not the path, nor the query, the user agent or the client
// address: a client makes those up. Nor the scheme and protocol version,
// the same on every request behind Cloud Run's front end: every attribute
// is encoded and sent again with every sampled span.

// Instrument wraps one entry point in an HTTP server span and the
// request-duration metric, both labelled with the route of route(r), which
// must be one of a fixed set of templates. Off (t nil), h is returned as it
// is.
func (t *Telemetry) Instrument(h http.Handler, route func(*http.Request) string) http.Handler {
	if t == nil {
		return h
	}
	return &serverSpans{t: t, next: h, route: route,
		names: map[routeKey]string{}, sets: map[routeKey]metric.MeasurementOption{}}
}

type serverSpans struct {
	t     *Telemetry
	next  http.Handler
	route func(*http.Request) string
	mu    sync.RWMutex
	names map[routeKey]string                   // by method and route (status 0)
	sets  map[routeKey]metric.MeasurementOption // the metric's attribute sets
}

// serverKind is made once: an option made per span would be an allocation.
var serverKind = trace.WithSpanKind(trace.SpanKindServer)

type routeKey struct {
	method, route string
	status        int
}

func (s *serverSpans) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	key := routeKey{method: methodLabel(r.Method), route: s.route(r)}
	// The span's parent is the caller's alone: starting from a context
	// without the server's values spares the SDK and the sampler a walk
	// along them.
	_, span := s.t.Tracer.Start(remoteParent(r.Header), s.name(key), serverKind)
	if span.IsRecording() {
		span.SetAttributes(attribute.String("http.request.method", key.method), attribute.String("http.route", key.route))
	}
	sw := &spanWriter{ResponseWriter: w}
	defer func() {
		key.status = sw.status
		if key.status == 0 {
			key.status = http.StatusOK
		}
		if span.IsRecording() {
			span.SetAttributes(attribute.Int("http.response.status_code", key.status))
			if key.status >= 500 {
				span.SetStatus(codes.Error, "")
			}
		}
		span.End()
		s.t.requestDuration.Record(context.Background(), time.Since(start).Seconds(), s.attrs(key))
	}()
	s.next.ServeHTTP(sw, r.WithContext(trace.ContextWithSpan(r.Context(), span)))
}

// remoteParent is a context holding the caller's span context, from a
// valid traceparent, else a valid X-Cloud-Trace-Context; or none.
func remoteParent(h http.Header) context.Context {
	ctx := context.Background()
	if len(h["Traceparent"]) > 0 {
		if c := (propagation.TraceContext{}).Extract(ctx, propagation.HeaderCarrier(h)); trace.SpanContextFromContext(c).IsValid() {
			return c
		}
	}
	if v := h["X-Cloud-Trace-Context"]; len(v) > 0 {
		if sc, ok := parseCloudTrace(v[0]); ok {
			return trace.ContextWithRemoteSpanContext(ctx, sc)
		}
	}
	return ctx
}

// name is the span name of key's method and route: "POST /", or for a
// method outside the standard set "HTTP /", as the conventions ask.
func (s *serverSpans) name(key routeKey) string {
	s.mu.RLock()
	n, ok := s.names[key]
	s.mu.RUnlock()
	if ok {
		return n
	}
	m := key.method
	if m == "_OTHER" {
		m = "HTTP"
	}
	n = m + " " + key.route
	s.mu.Lock()
	s.names[key] = n
	s.mu.Unlock()
	return n
}

// attrs is the request-duration metric's attribute set of key, made once.
// Every part is bounded: methodLabel's set, the route functions' templates,
// the statuses the function answers with.
func (s *serverSpans) attrs(key routeKey) metric.MeasurementOption {
	s.mu.RLock()
	o, ok := s.sets[key]
	s.mu.RUnlock()
	if ok {
		return o
	}
	kvs := []attribute.KeyValue{
		attribute.String("http.request.method", key.method),
		attribute.String("http.route", key.route),
		attribute.Int("http.response.status_code", key.status),
	}
	if key.status >= 500 {
		kvs = append(kvs, attribute.String("error.type", strconv.Itoa(key.status)))
	}
	o = metric.WithAttributeSet(attribute.NewSet(kvs...))
	s.mu.Lock()
	s.sets[key] = o
	s.mu.Unlock()
	return o
}

// methodLabel is the request's method when it is one of HTTP's own, else
// _OTHER: a client may send any token as a method.
func methodLabel(m string) string {
	switch m {
	case http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch,
		http.MethodDelete, http.MethodOptions, http.MethodConnect, http.MethodTrace:
		return m
	}
	return "_OTHER"
}

// spanWriter remembers the status the handler answered with.
type spanWriter struct {
	http.ResponseWriter
	status int
}

// Unwrap lets http.ResponseController reach the connection (read deadlines).
func (w *spanWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (w *spanWriter) WriteHeader(code int) {
	if w.status == 0 && code >= 200 { // not an informational 1xx
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *spanWriter) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(p)
}
