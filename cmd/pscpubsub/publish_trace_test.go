package main

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"cloud.google.com/go/pubsub/v2/apiv1/pubsubpb"
	"go.opentelemetry.io/otel"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
)

// TestPublishCarriesItsTraceWhenTelemetryIsOn: with an SDK installed (a
// build with -tags otlp and an endpoint set), publish sends each message
// with its publish span's context in googclient_traceparent, which the
// function's consumer span continues, and exports that span before it
// returns; without one it adds nothing (TestPublish).
func TestPublishCarriesItsTraceWhenTelemetryIsOn(t *testing.T) {
	fake := publishFake(t)
	if _, err := fake.GServer.CreateTopic(context.Background(), &pubsubpb.Topic{Name: "projects/local-project/topics/messages"}); err != nil {
		t.Fatal(err)
	}
	spans := tracetest.NewInMemoryExporter()
	// Batched, as the SDK the function installs: publish must flush it.
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(spans))
	prev := otel.GetTracerProvider()
	otel.SetTracerProvider(tp)
	defer func() {
		otel.SetTracerProvider(prev)
		_ = tp.Shutdown(context.Background())
	}()

	var stdout, stderr bytes.Buffer
	if err := publish(context.Background(), []string{"traced"}, strings.NewReader(""), &stdout, &stderr); err != nil {
		t.Fatalf("publish: %v\n%s", err, stderr.String())
	}
	msgs := fake.Messages()
	if len(msgs) != 1 {
		t.Fatalf("%d messages published, want 1", len(msgs))
	}
	tp0 := msgs[0].Attributes["googclient_traceparent"]
	if tp0 == "" {
		t.Fatalf("the message carries no googclient_traceparent: %v", msgs[0].Attributes)
	}
	exported := spans.GetSpans() // before any flush of the test's own
	if len(exported) == 0 {
		t.Fatal("publish returned without exporting its spans")
	}
	for _, s := range exported {
		if strings.Contains(tp0, s.SpanContext.TraceID().String()) {
			return
		}
	}
	t.Fatalf("googclient_traceparent %s is in none of the %d exported spans' traces", tp0, len(exported))
}
