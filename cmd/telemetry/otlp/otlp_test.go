package otlp

import (
	"context"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"

	"go.opentelemetry.io/otel"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	tracenoop "go.opentelemetry.io/otel/trace/noop"

	"example.com/pscmessages/cmd/telemetry"
)

// BenchmarkServerSpan is the server span's own cost around a handler that
// does nothing, unsampled and sampled.
func BenchmarkServerSpan(b *testing.B) {
	for _, mode := range []struct {
		name string
		env  map[string]string
	}{
		{"unsampled", map[string]string{"OTEL_TRACES_SAMPLER": "always_off"}},
		{"sampled", map[string]string{}},
	} {
		b.Run(mode.name, func(b *testing.B) {
			tel, err := telemetry.Setup(func(k string) string { return mode.env[k] }, InProcess(&Exporters{Spans: noopExporter{}, Metrics: sdkmetric.NewManualReader()}))
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() {
				otel.SetTracerProvider(tracenoop.NewTracerProvider())
				otel.SetMeterProvider(metricnoop.NewMeterProvider())
				_ = tel.Shutdown()
			})
			h := tel.Instrument(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(200) }), func(*http.Request) string { return "/" })
			req := httptest.NewRequest("POST", "/", nil)
			w := httptest.NewRecorder()
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				h.ServeHTTP(w, req)
			}
		})
	}
}

type noopExporter struct{}

func (noopExporter) ExportSpans(context.Context, []sdktrace.ReadOnlySpan) error { return nil }
func (noopExporter) Shutdown(context.Context) error                             { return nil }

// Importing the package is what links the SDK into a build: from then on an
// endpoint is accepted.
func TestImportRegistersTheSDK(t *testing.T) {
	getenv := func(k string) string {
		return map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}[k]
	}
	if err := telemetry.Check(getenv); err != nil {
		t.Fatalf("with package otlp imported, an endpoint is refused: %v", err)
	}
}

// TestMetricsExporterNone: OTEL_METRICS_EXPORTER=none sends traces only, to
// a receiver that takes no metrics (Jaeger answers them 404, which the
// runner would report at every stop); unset, both are sent.
func TestMetricsExporterNone(t *testing.T) {
	for _, mode := range []string{"", "none"} {
		t.Run("OTEL_METRICS_EXPORTER="+mode, func(t *testing.T) {
			var mu sync.Mutex
			paths := map[string]int{}
			receiver := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				mu.Lock()
				paths[r.URL.Path]++
				mu.Unlock()
			}))
			defer receiver.Close()
			// The exporters read their endpoint from the process's environment.
			t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.URL)
			env := map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.URL, "OTEL_METRICS_EXPORTER": mode}
			tel, err := telemetry.Setup(func(k string) string { return env[k] }, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer func() {
				otel.SetTracerProvider(tracenoop.NewTracerProvider())
				otel.SetMeterProvider(metricnoop.NewMeterProvider())
			}()
			counter, err := tel.Meter.Int64Counter("test.counter")
			if err != nil {
				t.Fatal(err)
			}
			counter.Add(context.Background(), 1)
			_, span := tel.Tracer.Start(context.Background(), "test span")
			span.End()
			if err := tel.Shutdown(); err != nil {
				t.Fatal(err)
			}
			mu.Lock()
			defer mu.Unlock()
			if paths["/v1/traces"] == 0 {
				t.Errorf("no traces sent: %v", paths)
			}
			if got, want := paths["/v1/metrics"] > 0, mode == ""; got != want {
				t.Errorf("metrics sent: %v, want %v (%v)", got, want, paths)
			}
		})
	}
}
