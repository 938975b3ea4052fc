// Package otlp is the OpenTelemetry SDK of the function, exporting traces
// and metrics by OTLP: importing it registers it with package telemetry,
// whose Setup then installs it when the OTEL_* variables ask.
//
// The function's package imports it only in a build with the otlp tag, or
// the end-to-end tier's e2e (../../../otlp.go): the SDK, its exporters and their gRPC are most of
// what the local runner would otherwise compile on its first run, and none
// of it is used unless an endpoint is set. The deploys in cloudbuild.yaml
// build with GOFLAGS=-tags=otlp; a build without the tag refuses an
// endpoint at start, naming OTEL_EXPORTER_OTLP_ENDPOINT.
package otlp

import (
	"context"
	"errors"
	"fmt"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetricgrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetrichttp"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.40.0"
	"golang.org/x/oauth2"
	"golang.org/x/oauth2/google"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/oauth"

	"example.com/pscmessages/cmd/telemetry"
	"example.com/pscmessages/store"
)

func init() { telemetry.Register(Install) }

// Exporters are where the SDK sends spans and metrics: OTLP's by default,
// in-process ones in tests (InProcess).
type Exporters struct {
	Spans   sdktrace.SpanExporter
	Metrics sdkmetric.Reader
}

// Install installs the SDK with OTLP exporters as s asks, with Google
// credentials for Google's endpoint.
func Install(s telemetry.Settings) (*telemetry.Telemetry, error) {
	ex, project, err := otlpExporters(context.Background(), s)
	if err != nil {
		return nil, err
	}
	var attrs []attribute.KeyValue
	if project != "" {
		// Google's Telemetry API files the spans under this project.
		attrs = append(attrs, attribute.String("gcp.project_id", project))
	}
	return install(s, ex, attrs)
}

// InProcess is an SDK exporting to ex instead of OTLP.
func InProcess(ex *Exporters) telemetry.SDK {
	return func(s telemetry.Settings) (*telemetry.Telemetry, error) { return install(s, ex, nil) }
}

func install(s telemetry.Settings, ex *Exporters, attrs []attribute.KeyValue) (*telemetry.Telemetry, error) {
	res, err := resource.New(context.Background(),
		resource.WithAttributes(append(attrs, semconv.ServiceName(s.ServiceName))...),
		resource.WithFromEnv(), // OTEL_RESOURCE_ATTRIBUTES, and OTEL_SERVICE_NAME over the above
		resource.WithTelemetrySDK(),
	)
	if err != nil {
		return nil, fmt.Errorf("OTEL_RESOURCE_ATTRIBUTES: %w", err)
	}
	tp := sdktrace.NewTracerProvider(
		sdktrace.WithResource(res),
		sdktrace.WithSampler(sampler(s)),
		sdktrace.WithBatcher(ex.Spans),
	)
	mopts := []sdkmetric.Option{sdkmetric.WithResource(res)}
	if ex.Metrics != nil { // nil: OTEL_METRICS_EXPORTER=none
		mopts = append(mopts, sdkmetric.WithReader(ex.Metrics))
	}
	mp := sdkmetric.NewMeterProvider(mopts...)
	shutdown := func(ctx context.Context) error {
		// Spans first: a metric export may wait for its interval.
		return errors.Join(tp.Shutdown(ctx), mp.Shutdown(ctx))
	}
	return telemetry.Install(tp, mp, tp.ForceFlush, shutdown)
}

// sampler is the SDK's sampler of the name and ratio s holds (checked by
// package telemetry).
func sampler(s telemetry.Settings) sdktrace.Sampler {
	switch s.Sampler {
	case "parentbased_always_off":
		return sdktrace.ParentBased(sdktrace.NeverSample())
	case "parentbased_traceidratio":
		return sdktrace.ParentBased(sdktrace.TraceIDRatioBased(s.Ratio))
	case "always_on":
		return sdktrace.AlwaysSample()
	case "always_off":
		return sdktrace.NeverSample()
	case "traceidratio":
		return sdktrace.TraceIDRatioBased(s.Ratio)
	}
	return sdktrace.ParentBased(sdktrace.AlwaysSample())
}

// otlpExporters makes the OTLP exporters, with Google credentials for
// Google's endpoint; project is then the credentials' project. The
// exporters read the rest of their OTEL_EXPORTER_OTLP_* variables
// themselves (endpoint, headers, timeouts, certificates).
func otlpExporters(ctx context.Context, s telemetry.Settings) (_ *Exporters, project string, err error) {
	var creds *google.Credentials
	if s.GoogleAuth {
		creds, err = google.FindDefaultCredentials(ctx, "https://www.googleapis.com/auth/cloud-platform")
		if err != nil {
			return nil, "", &store.ConfigError{Var: "OTEL_EXPORTER_OTLP_ENDPOINT", Msg: telemetry.GoogleTelemetryHost + " needs Google credentials, and none were found: " + err.Error()}
		}
		project = creds.ProjectID
	}
	var ex Exporters
	var metricExp sdkmetric.Exporter
	if s.Protocol == "grpc" {
		var traceOpts []otlptracegrpc.Option
		var metricOpts []otlpmetricgrpc.Option
		if creds != nil {
			// The token source refreshes the token before it expires.
			dial := grpc.WithPerRPCCredentials(oauth.TokenSource{TokenSource: creds.TokenSource})
			traceOpts = append(traceOpts, otlptracegrpc.WithDialOption(dial))
			metricOpts = append(metricOpts, otlpmetricgrpc.WithDialOption(dial))
		}
		if ex.Spans, err = otlptracegrpc.New(ctx, traceOpts...); err != nil {
			return nil, "", err
		}
		if !s.NoMetrics {
			if metricExp, err = otlpmetricgrpc.New(ctx, metricOpts...); err != nil {
				return nil, "", err
			}
		}
	} else {
		var traceOpts []otlptracehttp.Option
		var metricOpts []otlpmetrichttp.Option
		if creds != nil {
			client := oauth2.NewClient(ctx, creds.TokenSource)
			traceOpts = append(traceOpts, otlptracehttp.WithHTTPClient(client))
			metricOpts = append(metricOpts, otlpmetrichttp.WithHTTPClient(client))
		}
		if ex.Spans, err = otlptracehttp.New(ctx, traceOpts...); err != nil {
			return nil, "", err
		}
		if !s.NoMetrics {
			if metricExp, err = otlpmetrichttp.New(ctx, metricOpts...); err != nil {
				return nil, "", err
			}
		}
	}
	if metricExp != nil {
		ex.Metrics = sdkmetric.NewPeriodicReader(metricExp)
	}
	return &ex, project, nil
}
