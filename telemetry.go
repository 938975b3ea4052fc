package function

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
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

// OpenTelemetry. Configured only by the standard variables, so any OTLP
// backend works unchanged: telemetry is on when OTEL_EXPORTER_OTLP_ENDPOINT
// (or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) is set and OTEL_SDK_DISABLED is not
// true. Off, no SDK is installed and no handler is wrapped: the global
// providers stay the API's no-ops, which print and send nothing.
//
// On, traces and metrics go by OTLP, over HTTP/protobuf (the specification's
// default) or gRPC (OTEL_EXPORTER_OTLP_PROTOCOL=grpc). The exporters read
// the rest of their OTEL_EXPORTER_OTLP_* variables themselves (headers,
// timeouts, certificates). An endpoint on telemetry.googleapis.com is sent
// Google credentials (Application Default Credentials: on Cloud Run the
// service account) with each call, as Google's Telemetry (OTLP) API requires
// of an in-process exporter; over gRPC the token source refreshes them.
//
// Sampling follows OTEL_TRACES_SAMPLER and OTEL_TRACES_SAMPLER_ARG; the
// default, parentbased_always_on, keeps the decision of the caller, so
// Cloud Run's own sampling of a request decides whether its spans are kept.

// googleTelemetryHost is Google's OTLP endpoint (Cloud Trace and Cloud
// Monitoring behind the Telemetry API).
const googleTelemetryHost = "telemetry.googleapis.com"

// telemetryFlushTimeout bounds how long a shutdown waits for the last spans
// and metrics: well inside the 10 s Cloud Run gives a SIGTERMed instance.
const telemetryFlushTimeout = 5 * time.Second

// telemetrySettings is what the OTEL_* variables ask for.
type telemetrySettings struct {
	enabled    bool
	protocol   string // "http/protobuf" or "grpc"
	endpoint   string // for the Google credentials decision only
	sampler    sdktrace.Sampler
	googleAuth bool
}

func loadTelemetrySettings(getenv func(string) string) (telemetrySettings, error) {
	var t telemetrySettings
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

// telemetry is the process's SDK, nil when telemetry is off.
type telemetry struct {
	tracer trace.Tracer
	meters *meters
	tp     *sdktrace.TracerProvider
	mp     *sdkmetric.MeterProvider
	close  func(context.Context) error
}

// exporters lets tests put in-process exporters where OTLP would go.
type exporters struct {
	spans   sdktrace.SpanExporter
	metrics sdkmetric.Reader
}

// setupTelemetry installs the SDK as the global providers when the
// environment asks for it, and returns nil (nothing installed) otherwise.
func setupTelemetry(getenv func(string) string, ex *exporters) (*telemetry, error) {
	ts, err := loadTelemetrySettings(getenv)
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
		sdktrace.WithBatcher(ex.spans),
	)
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithResource(res), sdkmetric.WithReader(ex.metrics))
	prop := propagation.NewCompositeTextMapPropagator(cloudTraceContext{}, propagation.TraceContext{}, propagation.Baggage{})
	otel.SetTracerProvider(tp)
	otel.SetMeterProvider(mp)
	otel.SetTextMapPropagator(prop)
	m, err := newMeters(mp.Meter(instrumentationName))
	if err != nil {
		return nil, err
	}
	return &telemetry{
		tracer: tp.Tracer(instrumentationName),
		meters: m,
		tp:     tp,
		mp:     mp,
		close: func(ctx context.Context) error {
			// Spans first: a metric export may wait for its interval.
			return errors.Join(tp.Shutdown(ctx), mp.Shutdown(ctx))
		},
	}, nil
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
func otlpExporters(ctx context.Context, ts telemetrySettings) (_ *exporters, project string, err error) {
	var creds *google.Credentials
	if ts.googleAuth {
		creds, err = google.FindDefaultCredentials(ctx, "https://www.googleapis.com/auth/cloud-platform")
		if err != nil {
			return nil, "", &store.ConfigError{Var: "OTEL_EXPORTER_OTLP_ENDPOINT", Msg: googleTelemetryHost + " needs Google credentials, and none were found: " + err.Error()}
		}
		project = creds.ProjectID
	}
	var ex exporters
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
		if ex.spans, err = otlptracegrpc.New(ctx, traceOpts...); err != nil {
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
		if ex.spans, err = otlptracehttp.New(ctx, traceOpts...); err != nil {
			return nil, "", err
		}
		if metricExp, err = otlpmetrichttp.New(ctx, metricOpts...); err != nil {
			return nil, "", err
		}
	}
	ex.metrics = sdkmetric.NewPeriodicReader(metricExp)
	return &ex, project, nil
}

// shutdown flushes what is buffered and stops exporting.
func (t *telemetry) shutdown() error {
	if t == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), telemetryFlushTimeout)
	defer cancel()
	return t.close(ctx)
}

// messagesRoute is the route template of a Messages request: ids are not
// labels (unbounded), and neither is any other path a client makes up.
func messagesRoute(r *http.Request) string {
	switch p := r.URL.Path; {
	case p == "/" || p == "" || p == "/Messages":
		return "/"
	case p == "/messages" || p == "/messages/":
		return "/messages"
	case strings.HasPrefix(p, "/messages/"):
		return "/messages/{id}"
	}
	return "unmatched"
}

// deliveryRoute is the route of every IngestPubSub delivery: its path may
// name a topic or anything a pusher chose, which is no label.
func deliveryRoute(*http.Request) string { return "/IngestPubSub" }

// spanError marks the request's span failed with the kind of err: a fixed
// text, never err's message, which may quote what the client sent.
func spanError(ctx context.Context, kind string) {
	span := trace.SpanFromContext(ctx)
	if !span.IsRecording() {
		return
	}
	span.AddEvent("exception", trace.WithAttributes(attribute.String("exception.type", kind)))
	span.SetAttributes(attribute.String("error.type", kind))
}

// meters are the function's own instruments.
type meters struct {
	deliveries      metric.Int64Counter
	requestDuration metric.Float64Histogram
}

func newMeters(m metric.Meter) (*meters, error) {
	var ms meters
	var err error
	ms.deliveries, err = m.Int64Counter("pscmessages.deliveries",
		metric.WithDescription("Pub/Sub deliveries by outcome: stored, duplicate, dead_lettered (with its reason), redelivered (answered with a transient failure, so Pub/Sub delivers it again)"),
		metric.WithUnit("{delivery}"))
	if err != nil {
		return nil, err
	}
	ms.requestDuration, err = m.Float64Histogram("http.server.request.duration",
		metric.WithDescription("Duration of HTTP server requests"), metric.WithUnit("s"),
		// The HTTP semantic conventions' advised boundaries.
		metric.WithExplicitBucketBoundaries(0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10))
	if err != nil {
		return nil, err
	}
	_, err = m.Int64ObservableGauge("pscmessages.memory_budget.in_use",
		metric.WithDescription("Bytes of the request bodies' memory budget (BODY_MEMORY_BYTES) held by bodies being read and decoded: POST, PUT, PATCH and Pub/Sub deliveries"),
		metric.WithUnit("By"),
		metric.WithInt64Callback(func(_ context.Context, o metric.Int64Observer) error {
			o.Observe(budgetInUse.Load())
			return nil
		}))
	if err != nil {
		return nil, err
	}
	_, err = m.Int64ObservableGauge("pscmessages.memory_budget.limit",
		metric.WithDescription("Bytes of the request bodies' memory budget (BODY_MEMORY_BYTES)"),
		metric.WithUnit("By"),
		metric.WithInt64Callback(func(_ context.Context, o metric.Int64Observer) error {
			o.Observe(budgetLimit.Load())
			return nil
		}))
	return &ms, err
}

// localSpan is the trace and span ids of this process's span in ctx, when
// telemetry made one: log lines then name the span the trace backend shows.
// Otherwise it returns the ids it was given (the caller's, from headers).
func localSpan(ctx context.Context, traceID, spanID string, sampled bool) (string, string, bool) {
	sc := trace.SpanContextFromContext(ctx)
	if !sc.IsValid() || sc.IsRemote() {
		return traceID, spanID, sampled
	}
	return sc.TraceID().String(), sc.SpanID().String(), sc.IsSampled()
}

// runnerOwnsSignals is set when a local runner serves the functions (see
// Handler): it handles SIGTERM itself and calls Close.
var runnerOwnsSignals atomic.Bool

// flushOnSIGTERM flushes telemetry when Cloud Run stops the instance: it
// sends SIGTERM and kills the process 10 s later, and functions-framework-go
// neither handles the signal nor offers a shutdown hook. After the flush the
// signal is raised again, for its default action (exit).
func flushOnSIGTERM(t *telemetry, getenv func(string) string) {
	if t == nil || getenv("K_SERVICE") == "" {
		return
	}
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGTERM)
	go func() {
		<-ch
		signal.Stop(ch)
		if runnerOwnsSignals.Load() {
			return
		}
		_ = t.shutdown()
		_ = syscall.Kill(os.Getpid(), syscall.SIGTERM)
	}()
}
