package function

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	tracenoop "go.opentelemetry.io/otel/trace/noop"

	"example.com/pscmessages/cmd/telemetry/otlp"
)

// BenchmarkPostTelemetry is the function's own CPU per POST with telemetry
// off, on at 10 % sampling and on at 100 %, in process: requests go straight
// to the served handler (no HTTP client or server), spans are encoded by the
// real OTLP/HTTP exporter and sent to a sink in this process that discards
// them, so what it reports as cpu-µs/post is the function's work and the
// exporter's, not a receiver's. Profile one mode with -cpuprofile:
//
//	go test -run '^$' -bench 'BenchmarkPostTelemetry/10%' -cpuprofile cpu.out .
func BenchmarkPostTelemetry(b *testing.B) {
	sink := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
	}))
	b.Cleanup(sink.Close)
	for _, mode := range []struct {
		name    string
		sampler map[string]string // nil: telemetry off
	}{
		{"off", nil},
		{"10%", map[string]string{"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.1"}},
		{"100%", map[string]string{}},
	} {
		b.Run(mode.name, func(b *testing.B) {
			h := benchHandler(b, sink.URL, mode.sampler)
			body := `{"content":"` + strings.Repeat("x", 100) + `"}`
			b.SetParallelism(16) // 32 requests in flight on two cores, as the runner benchmark's c=32
			before := cpuTime()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					req := httptest.NewRequest("POST", "/", strings.NewReader(body))
					req.Header.Set("Content-Type", "application/json")
					w := httptest.NewRecorder()
					h.ServeHTTP(w, req)
					if w.Code != 200 {
						b.Errorf("POST: %d %s", w.Code, w.Body)
						return
					}
				}
			})
			b.StopTimer()
			b.ReportMetric(float64((cpuTime()-before).Microseconds())/float64(b.N), "cpu-µs/post")
		})
	}
}

// benchHandler serves Messages on a fresh database, with telemetry as env
// asks (nil: off) exporting to sink.
func benchHandler(b *testing.B, sink string, env map[string]string) http.Handler {
	b.Helper()
	var t *instruments
	if env != nil {
		exp, err := otlptracehttp.New(context.Background(), otlptracehttp.WithEndpointURL(sink+"/v1/traces"))
		if err != nil {
			b.Fatal(err)
		}
		if t, err = setupTelemetry(func(k string) string { return env[k] }, otlp.InProcess(&otlp.Exporters{Spans: exp, Metrics: sdkmetric.NewManualReader()})); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() {
			otel.SetTracerProvider(tracenoop.NewTracerProvider())
			otel.SetMeterProvider(metricnoop.NewMeterProvider())
			_ = t.shutdown()
		})
	}
	f := newFixture(b, nil)
	f.svc.tel = t
	h := t.instrument(f.svc, messagesRoute)
	// The first request opens the pool: not what is measured.
	req := httptest.NewRequest("POST", "/", strings.NewReader(`{"content":"warm-up"}`))
	req.Header.Set("Content-Type", "application/json")
	w := httptest.NewRecorder()
	h.ServeHTTP(w, req)
	if w.Code != 200 {
		b.Fatalf("warm-up POST: %d %s", w.Code, w.Body)
	}
	return h
}

// cpuTime is the CPU this process has used, user and system.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
