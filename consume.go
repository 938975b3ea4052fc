package function

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"sync/atomic"

	"example.com/pscmessages/store"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// The consumer side of a Pub/Sub delivery in traces and metrics.
//
// Publishers that trace (the Go client with EnableOpenTelemetryTracing, in
// cloud.google.com/go/pubsub/v2 trace.go) write their span's W3C context into
// the message attributes googclient_traceparent and googclient_tracestate
// (propagation.TraceContext through a carrier that prefixes "googclient_"),
// and that client's own subscriber makes its subscribe span a child of the
// context it extracts from there (iterator.go). Eventarc carries its own
// context as the CloudEvent traceparent extension (the CloudEvents
// distributed-tracing extension: in binary mode the traceparent header, in
// structured mode a "traceparent" member).
//
// The consumer span follows the client: a child of the publisher's context
// when the message has one, else of the CloudEvent's traceparent when that
// is not already the HTTP span's parent, else of the HTTP server span; the
// contexts it is not a child of are links. So one published message is one
// trace, from the publisher's create span to the INSERT.

// budgetInUse and budgetLimit are the bytes of the body budget (bodyBudget)
// held and its size, for the memory gauges.
var budgetInUse, budgetLimit atomic.Int64

// outcome is what became of one delivery, noted by the code that decided it.
type outcome struct {
	kind   string // stored, duplicate, dead_lettered; "" until noted
	reason string // the dead letter's reason class
}

type outcomeKey struct{}

// noteOutcome records what became of the delivery whose context ctx is.
func noteOutcome(ctx context.Context, kind, reason string) {
	if o, ok := ctx.Value(outcomeKey{}).(*outcome); ok {
		o.kind, o.reason = kind, reason
	}
	if span := trace.SpanFromContext(ctx); span.IsRecording() && kind != "stored" {
		attrs := []attribute.KeyValue{attribute.String("pscmessages.outcome", kind)}
		if reason != "" {
			attrs = append(attrs, attribute.String("pscmessages.dead_letter.reason", reason))
		}
		span.AddEvent(kind, trace.WithAttributes(attrs...))
	}
}

// consume starts the consumer span of one delivery and returns the context
// to handle it in. The message's attributes are attrs, or when attrs is nil
// those in data (a messagePublished payload). It returns the context, m with its traceparent set to that span (so its log lines
// carry the span's ids), and the function that ends the span and counts the
// outcome from the handler's error. Off, it costs a nil check.
func (s *service) consume(ctx context.Context, m eventMeta, data []byte, attrs map[string]string) (context.Context, eventMeta, func(error)) {
	t := s.tel
	if t == nil {
		return ctx, m, func(error) {}
	}
	o := &outcome{}
	ctx = context.WithValue(ctx, outcomeKey{}, o)
	var msg struct {
		Message struct {
			Attributes  map[string]string `json:"attributes"`
			MessageID   string            `json:"messageId"`
			OrderingKey string            `json:"orderingKey"`
		} `json:"message"`
		Subscription string `json:"subscription"`
	}
	if attrs == nil && data != nil {
		_ = json.Unmarshal(data, &msg) // a poison body has none of it; it is judged elsewhere
		attrs = msg.Message.Attributes
	}
	server := trace.SpanContextFromContext(ctx)
	parent := ctx
	var links []trace.Link
	addParent := func(sc trace.SpanContext) {
		if !sc.IsValid() || sc.Equal(server) || sc.Equal(trace.SpanContextFromContext(parent)) {
			return
		}
		if trace.SpanContextFromContext(parent).Equal(server) {
			// A link to the parent too would make Jaeger show the
			// parent as FOLLOWS_FROM instead of CHILD_OF.
			parent = trace.ContextWithRemoteSpanContext(ctx, sc)
			return
		}
		links = append(links, trace.Link{SpanContext: sc})
	}
	if attrs != nil {
		addParent(trace.SpanContextFromContext(propagation.TraceContext{}.Extract(context.Background(), googclientCarrier(attrs))))
	}
	if m.traceparent != "" {
		addParent(trace.SpanContextFromContext(propagation.TraceContext{}.Extract(context.Background(), propagation.MapCarrier{"traceparent": m.traceparent})))
	}
	if !trace.SpanContextFromContext(parent).Equal(server) && server.IsValid() {
		links = append(links, trace.Link{SpanContext: server, Attributes: []attribute.KeyValue{attribute.String("pscmessages.link", "http.server")}})
	}
	topic := topicName(m.source)
	ctx, span := t.Tracer.Start(parent, "process "+topic, trace.WithSpanKind(trace.SpanKindConsumer), trace.WithLinks(links...))
	if span.IsRecording() { // an unsampled delivery pays for none of them
		span.SetAttributes(
			attribute.String("messaging.system", "gcp_pubsub"),
			attribute.String("messaging.operation.type", "process"),
			attribute.String("messaging.operation.name", "process"),
			attribute.String("messaging.destination.name", topic),
			attribute.String("messaging.message.id", logText(cmpOr(msg.Message.MessageID, m.id))),
			attribute.String("cloudevents.event_id", logText(m.id)),
			attribute.String("cloudevents.event_type", logText(m.typ)),
		)
		if sub := msg.Subscription; sub != "" {
			span.SetAttributes(attribute.String("messaging.destination.subscription.name", logText(sub[strings.LastIndexByte(sub, '/')+1:])))
		}
		if k := msg.Message.OrderingKey; k != "" {
			span.SetAttributes(attribute.String("messaging.gcp_pubsub.message.ordering_key", logText(k)))
		}
	}
	if sc := span.SpanContext(); sc.IsValid() {
		m.traceparent = "00-" + sc.TraceID().String() + "-" + sc.SpanID().String() + "-" + sc.TraceFlags().String()
	}
	return ctx, m, func(err error) {
		kind := o.kind
		switch {
		case err != nil:
			kind = "redelivered"
			span.AddEvent("redelivery requested", trace.WithAttributes(attribute.String("error.type", errorKind(err))))
			span.SetStatus(codes.Error, errorKind(err))
		case kind == "":
			kind = "stored"
		}
		t.deliveries.Add(context.Background(), 1, t.deliveryAttrs(kind, o.reason))
		if span.IsRecording() {
			span.SetAttributes(attribute.String("pscmessages.outcome", kind))
		}
		span.End()
	}
}

// googclientCarrier reads what the Go Pub/Sub client wrote: the W3C fields
// under the attribute names prefixed with "googclient_".
type googclientCarrier map[string]string

func (c googclientCarrier) Get(key string) string { return c["googclient_"+key] }
func (c googclientCarrier) Set(string, string)    {}
func (c googclientCarrier) Keys() []string {
	return []string{"googclient_traceparent", "googclient_tracestate"}
}

// topicName is T of "//pubsub.googleapis.com/projects/P/topics/T", cut to a
// label's length; anything else is "unknown".
func topicName(source string) string {
	_, t, ok := strings.Cut(source, "/topics/")
	if !ok || t == "" {
		return "unknown"
	}
	return logText(t)
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// deadLetterReasons maps the start of a dead letter's reason, which may quote
// what was sent, to a fixed class: the only form of a reason that goes into
// a metric label or a span.
var deadLetterReasons = []struct{ prefix, class string }{
	{"the delivery of ", "oversized"},
	{"batched CloudEvents", "batch_unsupported"},
	{"unsupported CloudEvents specversion", "bad_specversion"},
	{"the CloudEvent has no ", "missing_identity"},
	{"not a structured CloudEvent", "not_an_event"},
	{"neither a CloudEvent", "not_an_event"},
	{"the message id was already stored with different content", "id_reused"},
	{"the message cannot be stored", "refused_by_database"},
	{"event type ", "wrong_type"},
	{"event data is not a Pub/Sub message", "bad_data"},
	{"message data is empty", "empty"},
	{"message data is not valid UTF-8", "not_utf8"},
	{`field "content"`, "bad_content_field"},
	{"content ", "bad_content"},
	{"the message id ", "bad_message_id"},
	{"the event source ", "bad_source"},
	{"the deduplication key ", "key_too_long"},
}

func deadLetterReason(reason string) string {
	for _, r := range deadLetterReasons {
		if strings.HasPrefix(reason, r.prefix) {
			return r.class
		}
	}
	return "other"
}

// unwrappedAttrs is the tracing attributes of an unwrapped push delivery,
// which Pub/Sub writes as headers; nil for other deliveries, whose attributes
// are in their data.
func unwrappedAttrs(r *http.Request) map[string]string {
	if !isUnwrapped(r) {
		return nil
	}
	return map[string]string{
		"googclient_traceparent": r.Header.Get("googclient_traceparent"),
		"googclient_tracestate":  r.Header.Get("googclient_tracestate"),
	}
}

// tracedReplay is replay in a span of its own, ending with a "replay" event
// that says what became of the dead letter.
func (s *service) tracedReplay(ctx context.Context, d store.DeadLetter) (Replayed, error) {
	if s.tel == nil {
		return s.replay(ctx, d)
	}
	ctx, span := s.tel.Tracer.Start(ctx, "replay dead letter", trace.WithAttributes(
		attribute.String("messaging.system", "gcp_pubsub"),
		attribute.String("cloudevents.event_id", logText(d.EventID))))
	defer span.End()
	res, err := s.replay(ctx, d)
	outcome := "stored"
	switch {
	case errors.Is(err, ErrStillPoison):
		outcome = "still_poison"
	case err != nil:
		outcome = "failed"
		span.SetStatus(codes.Error, errorKind(err))
	case res.AlreadyStored:
		outcome = "already_stored"
	}
	span.AddEvent("replay", trace.WithAttributes(attribute.String("pscmessages.outcome", outcome)))
	return res, err
}
