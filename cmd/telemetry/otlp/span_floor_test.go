package otlp

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"syscall"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

// BenchmarkSpanFloor is what one span costs in the SDK and exporter this
// package installs, apart from anything of ours: a span with the server
// span's three attributes, started and ended, and, when sampled, batched,
// encoded and sent by the OTLP/HTTP exporter to a receiver in this process
// that discards the bytes. The batcher blocks rather than drops, so every
// sampled span is exported and counted. It reports CPU per span (the
// process's user and system time), the floor under any per-request tracing
// cost: cmd/pscbench/BENCHMARKS.md compares it with a POST's.
//
//	go test -run '^$' -bench BenchmarkSpanFloor -benchtime 200000x ./cmd/telemetry/otlp
func BenchmarkSpanFloor(b *testing.B) {
	sink := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
	}))
	b.Cleanup(sink.Close)
	attrs := []attribute.KeyValue{
		attribute.String("http.request.method", "POST"),
		attribute.String("http.route", "/"),
		attribute.Int("http.response.status_code", 200),
	}
	for _, mode := range []struct {
		name    string
		sampler sdktrace.Sampler
	}{
		{"unsampled", sdktrace.NeverSample()},
		{"sampled", sdktrace.AlwaysSample()},
	} {
		b.Run(mode.name, func(b *testing.B) {
			exp, err := otlptracehttp.New(context.Background(), otlptracehttp.WithEndpointURL(sink.URL+"/v1/traces"))
			if err != nil {
				b.Fatal(err)
			}
			tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(mode.sampler),
				sdktrace.WithBatcher(exp, sdktrace.WithBlocking()))
			b.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
			tracer := tp.Tracer("floor")
			kind := trace.WithSpanKind(trace.SpanKindServer)
			before := processCPU()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					_, span := tracer.Start(context.Background(), "POST /", kind)
					if span.IsRecording() {
						span.SetAttributes(attrs...)
					}
					span.End()
				}
			})
			if err := tp.ForceFlush(context.Background()); err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			b.ReportMetric(float64((processCPU()-before).Nanoseconds())/float64(b.N)/1e3, "cpu-µs/span")
		})
	}
}

// processCPU is this process's user and system time so far.
func processCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
