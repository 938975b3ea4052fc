package telemetry

import (
	"context"
	"encoding/binary"
	"encoding/hex"
	"strconv"
	"strings"

	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// cloudTraceContext extracts Google's X-Cloud-Trace-Context header,
// "TRACE_ID/SPAN_ID;o=OPTIONS" (TRACE_ID 32 hex digits, SPAN_ID an unsigned
// decimal, o=1 when the request is traced), for callers that send it and no
// traceparent. It goes before TraceContext in the composite propagator, so a
// valid traceparent wins. It injects nothing: the function calls no one
// over HTTP.
type cloudTraceContext struct{}

const cloudTraceHeader = "X-Cloud-Trace-Context"

func (cloudTraceContext) Inject(context.Context, propagation.TextMapCarrier) {}

func (cloudTraceContext) Extract(ctx context.Context, c propagation.TextMapCarrier) context.Context {
	if sc, ok := parseCloudTrace(c.Get(cloudTraceHeader)); ok {
		return trace.ContextWithRemoteSpanContext(ctx, sc)
	}
	return ctx
}

func (cloudTraceContext) Fields() []string { return []string{cloudTraceHeader} }

func parseCloudTrace(v string) (trace.SpanContext, bool) {
	traceHex, rest, ok := strings.Cut(v, "/")
	if !ok || len(traceHex) != 32 {
		return trace.SpanContext{}, false
	}
	var cfg trace.SpanContextConfig
	if _, err := hex.Decode(cfg.TraceID[:], []byte(traceHex)); err != nil {
		return trace.SpanContext{}, false
	}
	spanDec, opts, _ := strings.Cut(rest, ";")
	n, err := strconv.ParseUint(spanDec, 10, 64)
	if err != nil || n == 0 {
		return trace.SpanContext{}, false
	}
	binary.BigEndian.PutUint64(cfg.SpanID[:], n)
	if opts == "o=1" {
		cfg.TraceFlags = trace.FlagsSampled
	}
	cfg.Remote = true
	sc := trace.NewSpanContext(cfg)
	return sc, sc.IsValid()
}
