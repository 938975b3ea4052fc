package telemetry

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetricgrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetrichttp"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.40.0"
	"go.opentelemetry.io/otel/trace"
	"golang.org/x/oauth2"
	"golang.org/x/oauth2/google"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/oauth"

	"example.com/pscmessages/store"
)

// googleTelemetryHost is Google's OTLP endpoint (Cloud Trace and Cloud
// Monitoring behind the Telemetry API).
const googleTelemetryHost = "telemetry.googleapis.com"

// FlushTimeout bounds how long Shutdown waits for the last spans and
// metrics: well inside the 10 s Cloud Run gives a SIGTERMed instance.
const FlushTimeout = 5 * time.Second

// settings is what the OTEL_* variables ask for.
type settings struct {
	enabled    bool
	protocol   string // "http/protobuf" or "grpc"
	endpoint   string // for the Google credentials decision only
	sampler    sdktrace.Sampler
	googleAuth bool
}

func loadSettings(getenv func(string) string) (settings, error) {
	var t settings
	switch v := strings.ToLower(strings.TrimSpace(getenv("OTEL_SDK_DISABLED"))); v {
	case "", "false":
	case "true":
		return t, nil
	default:
		return t, &store.ConfigError{Var: "OTEL_SDK_DISABLED", Msg: "must be true or false"}
	}
	t.endpoint = getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
	if t.endpoint == "" {
		t.endpoint = getenv("OTEL_EXPORTER_OTLP_ENDPOINT")
	}
	t.protocol = getenv("OTEL_EXPORTER_OTLP_PROTOCOL")
	if v := getenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"); v != "" {
		t.protocol = v
	}
	switch t.protocol {
	case "":
		t.protocol = "http/protobuf"
	case "http/protobuf", "grpc":
	default:
		return t, &store.ConfigError{Var: "OTEL_EXPORTER_OTLP_PROTOCOL", Msg: "must be http/protobuf or grpc (the Go exporters send no JSON)"}
	}
	var err error
	if t.sampler, err = samplerFromEnv(getenv); err != nil {
		return t, err
	}
	if t.endpoint == "" {
		return t, nil
	}
	u, err := url.Parse(t.endpoint)
	if err != nil || u.Host == "" {
		return t, &store.ConfigError{Var: "OTEL_EXPORTER_OTLP_ENDPOINT", Msg: "must be a URL such as http://127.0.0.1:4318 or https://telemetry.googleapis.com"}
	}
	t.googleAuth = u.Hostname() == googleTelemetryHost
	t.enabled = true
	return t, nil
}

// samplerFromEnv reads OTEL_TRACES_SAMPLER and OTEL_TRACES_SAMPLER_ARG as the
// SDK would, but refuses a value it would silently ignore.
func samplerFromEnv(getenv func(string) string) (sdktrace.Sampler, error) {
	ratio := 1.0
	if v := getenv("OTEL_TRACES_SAMPLER_ARG"); v != "" {
		f, err := strconv.ParseFloat(v, 64)
		if err != nil || f < 0 || f > 1 {
			return nil, &store.ConfigError{Var: "OTEL_TRACES_SAMPLER_ARG", Msg: "must be a ratio from 0 to 1"}
		}
		ratio = f
	}
	switch v := getenv("OTEL_TRACES_SAMPLER"); v {
	case "", "parentbased_always_on":
		return sdktrace.ParentBased(sdktrace.AlwaysSample()), nil
	case "parentbased_always_off":
		return sdktrace.ParentBased(sdktrace.NeverSample()), nil
	case "parentbased_traceidratio":
		return sdktrace.ParentBased(sdktrace.TraceIDRatioBased(ratio)), nil
	case "always_on":
		return sdktrace.AlwaysSample(), nil
	case "always_off":
		return sdktrace.NeverSample(), nil
	case "traceidratio":
		return sdktrace.TraceIDRatioBased(ratio), nil
	default:
		return nil, &store.ConfigError{Var: "OTEL_TRACES_SAMPLER", Msg: "must be one of parentbased_always_on (the default), parentbased_always_off, parentbased_traceidratio, always_on, always_off, traceidratio"}
	}
}

// Telemetry is the process's SDK; nil when telemetry is off, and then every
// method does nothing.
type Telemetry struct {
	// Tracer and Meter are the function's own, on the SDK's providers.
	Tracer trace.Tracer
	Meter  metric.Meter

	requestDuration metric.Float64Histogram
	tp              *sdktrace.TracerProvider
	mp              *sdkmetric.MeterProvider
}

// Exporters lets tests put in-process exporters where OTLP would go.
type Exporters struct {
	Spans   sdktrace.SpanExporter
	Metrics sdkmetric.Reader
}

// Check reports what is wrong with the OTEL_* variables, naming the
// variable, without setting anything up.
func Check(getenv func(string) string) error {
	_, err := loadSettings(getenv)
	return err
}

// Setup installs the SDK as the global providers when the environment asks
// for it (or ex is given), and returns nil (nothing installed) otherwise.
func Setup(getenv func(string) string, ex *Exporters) (*Telemetry, error) {
	ts, err := loadSettings(getenv)
	if err != nil || (!ts.enabled && ex == nil) {
		return nil, err
	}
	ctx := context.Background()
	attrs := []attribute.KeyValue{semconv.ServiceName(serviceName(getenv))}
	if ex == nil {
		var project string
		if ex, project, err = otlpExporters(ctx, ts); err != nil {
			return nil, err
		}
		if project != "" {
			// Google's Telemetry API files the spans under this project.
			attrs = append(attrs, attribute.String("gcp.project_id", project))
		}
	}
	res, err := resource.New(ctx,
		resource.WithAttributes(attrs...),
		resource.WithFromEnv(), // OTEL_RESOURCE_ATTRIBUTES, and OTEL_SERVICE_NAME over the above
		resource.WithTelemetrySDK(),
	)
	if err != nil {
		return nil, fmt.Errorf("OTEL_RESOURCE_ATTRIBUTES: %w", err)
	}
	tp := sdktrace.NewTracerProvider(
		sdktrace.WithResource(res),
		sdktrace.WithSampler(ts.sampler),
		sdktrace.WithBatcher(ex.Spans),
	)
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithResource(res), sdkmetric.WithReader(ex.Metrics))
	prop := propagation.NewCompositeTextMapPropagator(cloudTraceContext{}, propagation.TraceContext{}, propagation.Baggage{})
	otel.SetTracerProvider(tp)
	otel.SetMeterProvider(mp)
	otel.SetTextMapPropagator(prop)
	t := &Telemetry{Tracer: tp.Tracer(instrumentationName), Meter: mp.Meter(instrumentationName), tp: tp, mp: mp}
	t.requestDuration, err = t.Meter.Float64Histogram("http.server.request.duration",
		metric.WithDescription("Duration of HTTP server requests"), metric.WithUnit("s"),
		// The HTTP semantic conventions' advised boundaries.
		metric.WithExplicitBucketBoundaries(0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10))
	if err != nil {
		return nil, err
	}
	return t, nil
}

const instrumentationName = "example.com/pscmessages"

// serviceName is what a trace backend lists the process as: OTEL_SERVICE_NAME,
// else the Cloud Run service, else pscmessages.
func serviceName(getenv func(string) string) string {
	for _, v := range []string{getenv("OTEL_SERVICE_NAME"), getenv("K_SERVICE")} {
		if v != "" {
			return v
		}
	}
	return "pscmessages"
}

// otlpExporters makes the OTLP exporters, with Google credentials for
// Google's endpoint; project is then the credentials' project.
func otlpExporters(ctx context.Context, ts settings) (_ *Exporters, project string, err error) {
	var creds *google.Credentials
	if ts.googleAuth {
		creds, err = google.FindDefaultCredentials(ctx, "https://www.googleapis.com/auth/cloud-platform")
		if err != nil {
			return nil, "", &store.ConfigError{Var: "OTEL_EXPORTER_OTLP_ENDPOINT", Msg: googleTelemetryHost + " needs Google credentials, and none were found: " + err.Error()}
		}
		project = creds.ProjectID
	}
	var ex Exporters
	var metricExp sdkmetric.Exporter
	if ts.protocol == "grpc" {
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
		if metricExp, err = otlpmetricgrpc.New(ctx, metricOpts...); err != nil {
			return nil, "", err
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
		if metricExp, err = otlpmetrichttp.New(ctx, metricOpts...); err != nil {
			return nil, "", err
		}
	}
	ex.Metrics = sdkmetric.NewPeriodicReader(metricExp)
	return &ex, project, nil
}

// Shutdown flushes what is buffered and stops exporting, within
// FlushTimeout.
func (t *Telemetry) Shutdown() error {
	if t == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), FlushTimeout)
	defer cancel()
	// Spans first: a metric export may wait for its interval.
	return errors.Join(t.tp.Shutdown(ctx), t.mp.Shutdown(ctx))
}

// ForceFlush exports the spans ended so far.
func (t *Telemetry) ForceFlush(ctx context.Context) error {
	if t == nil {
		return nil
	}
	return t.tp.ForceFlush(ctx)
}
