package telemetry

import (
	"context"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
)

// SpanError marks the request's span failed with the kind of err: a fixed
// text, never err's message, which may quote what the client sent.
func SpanError(ctx context.Context, kind string) {
	span := trace.SpanFromContext(ctx)
	if !span.IsRecording() {
		return
	}
	span.AddEvent("exception", trace.WithAttributes(attribute.String("exception.type", kind)))
	span.SetAttributes(attribute.String("error.type", kind))
}

// LocalSpan is the trace and span ids of this process's span in ctx, when
// telemetry made one: log lines then name the span the trace backend shows.
// Otherwise it returns the ids it was given (the caller's, from headers).
func LocalSpan(ctx context.Context, traceID, spanID string, sampled bool) (string, string, bool) {
	sc := trace.SpanContextFromContext(ctx)
	if !sc.IsValid() || sc.IsRemote() {
		return traceID, spanID, sampled
	}
	return sc.TraceID().String(), sc.SpanID().String(), sc.IsSampled()
}
