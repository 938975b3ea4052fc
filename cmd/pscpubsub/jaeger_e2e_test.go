//go:build e2e

package main

// Traces in a real trace backend: the runner (and its -pubsub mode) exports
// OTLP to Jaeger, whose query API (the one its UI reads) must then show one
// request's server, batch and INSERT spans in the caller's trace, and a
// published message's consumer span as the child of the publisher's.

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"cloud.google.com/go/pubsub/v2"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	tracenoop "go.opentelemetry.io/otel/trace/noop"

	"example.com/pscmessages/cmd/internal/jaegertest"
)

// jaegerSpan is a span as Jaeger's query API gives it.
type jaegerSpan struct {
	SpanID        string `json:"spanID"`
	OperationName string `json:"operationName"`
	References    []struct {
		RefType string `json:"refType"`
		TraceID string `json:"traceID"`
		SpanID  string `json:"spanID"`
	} `json:"references"`
	Tags []struct {
		Key   string `json:"key"`
		Value any    `json:"value"`
	} `json:"tags"`
	Logs []struct {
		Fields []struct {
			Key   string `json:"key"`
			Value any    `json:"value"`
		} `json:"fields"`
	} `json:"logs"`
}

func (s jaegerSpan) parent() string {
	for _, r := range s.References {
		if r.RefType == "CHILD_OF" {
			return r.SpanID
		}
	}
	return ""
}

func (s jaegerSpan) hasEvent(name string) bool {
	for _, l := range s.Logs {
		for _, f := range l.Fields {
			if f.Key == "event" && f.Value == name {
				return true
			}
		}
	}
	return false
}

// jaegerTrace polls the query API until ok accepts the trace's spans.
func jaegerTrace(t *testing.T, traceID string, ok func([]jaegerSpan) bool) []jaegerSpan {
	t.Helper()
	var spans []jaegerSpan
	deadline := time.Now().Add(30 * time.Second)
	for {
		spans = nil
		resp, err := http.Get(jaegertest.Query + "/api/traces/" + traceID)
		if err == nil {
			var body struct {
				Data []struct {
					Spans []jaegerSpan `json:"spans"`
				} `json:"data"`
			}
			if json.NewDecoder(resp.Body).Decode(&body) == nil && len(body.Data) > 0 {
				spans = body.Data[0].Spans
			}
			resp.Body.Close()
		}
		if ok(spans) {
			return spans
		}
		if time.Now().After(deadline) {
			var names []string
			for _, s := range spans {
				names = append(names, s.OperationName)
			}
			t.Fatalf("trace %s in Jaeger has spans %q; not what was expected within 30 s", traceID, names)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

func spanByName(spans []jaegerSpan, pred func(string) bool) (jaegerSpan, bool) {
	for _, s := range spans {
		if pred(s.OperationName) {
			return s, true
		}
	}
	return jaegerSpan{}, false
}

func named(n string) func(string) bool { return func(s string) bool { return s == n } }

// otelEnv points a runner at Jaeger, exporting each span within 100 ms.
func otelEnv(service string) map[string]string {
	return map[string]string{
		"OTEL_EXPORTER_OTLP_ENDPOINT": jaegertest.OTLP,
		"OTEL_SERVICE_NAME":           service,
		"OTEL_BSP_SCHEDULE_DELAY":     "100",
	}
}

func TestJaegerTraces(t *testing.T) {
	jaegertest.Start(t)
	env := newEmuEnv(t)

	t.Run("POST with traceparent", func(t *testing.T) {
		const traceID = "5bf92f3577b34da6a3ce929d0e0e4736"
		serveEnv := otelEnv("pscmessages-e2e-http")
		serveEnv["DATABASE_URL"] = env.database(t)
		r := startRunner(t, runnerOptions{host: "127.0.0.1", env: serveEnv, unset: psUnset, cleanExit: true})
		select {
		case <-r.ready:
		case <-r.exited:
			t.Fatalf("the runner exited: %s", r.stderr.String())
		case <-time.After(60 * time.Second):
			t.Fatal("the runner did not start in 60 s")
		}
		req, _ := http.NewRequest("POST", r.base+"/", strings.NewReader(`{"content":"traced in jaeger"}`))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("traceparent", "00-"+traceID+"-00f067aa0ba902b7-01")
		resp, err := http.DefaultClient.Do(req)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("POST: %v %v", resp, err)
		}
		resp.Body.Close()
		spans := jaegerTrace(t, traceID, func(spans []jaegerSpan) bool {
			_, a := spanByName(spans, named("POST /"))
			_, b := spanByName(spans, named("group commit"))
			_, c := spanByName(spans, func(n string) bool { return strings.HasPrefix(n, "INSERT ") })
			return a && b && c
		})
		server, _ := spanByName(spans, named("POST /"))
		batch, _ := spanByName(spans, named("group commit"))
		insert, _ := spanByName(spans, func(n string) bool { return strings.HasPrefix(n, "INSERT ") })
		if server.parent() != "00f067aa0ba902b7" {
			t.Errorf("server span's parent %q, want the traceparent's span", server.parent())
		}
		if insert.parent() != batch.SpanID {
			t.Errorf("INSERT span's parent %q, want the batch span %s", insert.parent(), batch.SpanID)
		}
	})

	t.Run("published message", func(t *testing.T) {
		url := env.database(t)
		const topic = "traced"
		serveEnv := otelEnv("pscmessages-e2e-pubsub")
		for k, v := range map[string]string{"DATABASE_URL": url, "PUBSUB_EMULATOR_HOST": env.emu.Addr,
			"PUBSUB_PROJECT_ID": env.emu.Project, "PUBSUB_TOPIC": topic} {
			serveEnv[k] = v
		}
		psStartServe(t, serveEnv, "-pubsub-concurrency", e2eConcurrency)

		// The publisher: the Go client with its tracing on, exporting to Jaeger.
		ctx := context.Background()
		exp, err := otlptracehttp.New(ctx, otlptracehttp.WithEndpointURL(jaegertest.OTLP+"/v1/traces"))
		if err != nil {
			t.Fatal(err)
		}
		tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp),
			sdktrace.WithResource(resource.NewSchemaless(attribute.String("service.name", "publisher"))))
		otel.SetTracerProvider(tp)
		t.Cleanup(func() { otel.SetTracerProvider(tracenoop.NewTracerProvider()); tp.Shutdown(ctx) })
		t.Setenv("PUBSUB_EMULATOR_HOST", env.emu.Addr)
		client, err := pubsub.NewClientWithConfig(ctx, env.emu.Project, &pubsub.ClientConfig{EnableOpenTelemetryTracing: true})
		if err != nil {
			t.Fatal(err)
		}
		defer client.Close()
		pub := client.Publisher(topic)
		defer pub.Stop()
		publish := func(data []byte) string {
			ctx, span := tp.Tracer("e2e").Start(ctx, "publish one message")
			defer span.End()
			if _, err := pub.Publish(ctx, &pubsub.Message{Data: data}).Get(ctx); err != nil {
				t.Fatal(err)
			}
			return span.SpanContext().TraceID().String()
		}
		isConsumer := func(n string) bool { return n == "process "+topic }
		isCreate := func(n string) bool { return strings.HasSuffix(n, " create") }

		traceID := publish([]byte(fmt.Sprint("published with tracing ", time.Now().UnixNano())))
		spans := jaegerTrace(t, traceID, func(spans []jaegerSpan) bool {
			_, a := spanByName(spans, isConsumer)
			_, b := spanByName(spans, isCreate)
			_, c := spanByName(spans, func(n string) bool { return strings.HasPrefix(n, "INSERT ") })
			return a && b && c
		})
		consumer, _ := spanByName(spans, isConsumer)
		create, _ := spanByName(spans, isCreate)
		if consumer.parent() != create.SpanID {
			t.Errorf("consumer span's parent %q, want the publisher's create span %s (references %+v)", consumer.parent(), create.SpanID, consumer.References)
		}

		if png := os.Getenv("JAEGER_SCREENSHOT"); png != "" {
			jaegerScreenshot(t, traceID, png)
		}

		// A message that can never be stored: a dead letter, as an event.
		traceID = publish([]byte{0xff, 0xfe})
		jaegerTrace(t, traceID, func(spans []jaegerSpan) bool {
			c, ok := spanByName(spans, isConsumer)
			return ok && c.hasEvent("dead_lettered")
		})
	})
}

// jaegerScreenshot saves Jaeger's UI page of one trace as a PNG, taken by
// headless Chromium (Debian: apt-get install chromium). cmd/pscmessages/tools/
// jaeger-screenshot.sh runs the published-message test with it.
func jaegerScreenshot(t *testing.T, traceID, png string) {
	t.Helper()
	bin, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatalf("JAEGER_SCREENSHOT needs chromium (apt-get install chromium): %v", err)
	}
	cmd := exec.Command(bin, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
		"--user-data-dir="+t.TempDir(), "--window-size=1400,900", "--virtual-time-budget=15000",
		"--screenshot="+png, jaegertest.Query+"/trace/"+traceID+"?uiEmbed=v0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("chromium: %v\n%s", err, out)
	}
	if st, err := os.Stat(png); err != nil || st.Size() == 0 {
		t.Fatalf("no screenshot at %s: %v", png, err)
	}
}
