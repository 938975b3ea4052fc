package telemetry

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"

	"go.opentelemetry.io/otel"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	tracenoop "go.opentelemetry.io/otel/trace/noop"
)

// Off (no endpoint, or OTEL_SDK_DISABLED=true) nothing is installed: the
// handlers are served unwrapped, the global providers stay the API's no-ops,
// and a store opened then has no observer (see store/telemetry.go).
func TestTelemetryOffInstallsNothing(t *testing.T) {
	for _, env := range []map[string]string{
		{},
		{"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1"},
		{"OTEL_SERVICE_NAME": "x", "OTEL_TRACES_SAMPLER": "always_on"},
	} {
		tel, err := Setup(func(k string) string { return env[k] }, nil)
		if err != nil || tel != nil {
			t.Fatalf("%v: telemetry %v, %v; want none", env, tel, err)
		}
		h := http.HandlerFunc(func(http.ResponseWriter, *http.Request) {})
		if got := tel.Instrument(h, func(*http.Request) string { return "/" }); fmt.Sprintf("%p", got) != fmt.Sprintf("%p", h) {
			t.Fatalf("%v: the handler was wrapped", env)
		}
		if _, sdk := otel.GetTracerProvider().(interface{ ForceFlush(context.Context) error }); sdk {
			t.Fatalf("%v: an SDK tracer provider is installed", env)
		}
	}
}

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
			tel, err := Setup(func(k string) string { return mode.env[k] }, &Exporters{Spans: noopExporter{}, Metrics: sdkmetric.NewManualReader()})
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
