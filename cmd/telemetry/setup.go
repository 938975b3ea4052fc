package telemetry

import (
	"context"
	"errors"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"example.com/pscmessages/store"
)

// GoogleTelemetryHost is Google's OTLP endpoint (Cloud Trace and Cloud
// Monitoring behind the Telemetry API).
const GoogleTelemetryHost = "telemetry.googleapis.com"

// FlushTimeout bounds how long Shutdown waits for the last spans and
// metrics: well inside the 10 s Cloud Run gives a SIGTERMed instance.
const FlushTimeout = 5 * time.Second

// Settings is what the OTEL_* variables ask for, checked; an SDK installs
// itself by them.
type Settings struct {
	Protocol    string  // "http/protobuf" (the default) or "grpc"
	Sampler     string  // OTEL_TRACES_SAMPLER, one of the names samplerNames lists
	Ratio       float64 // OTEL_TRACES_SAMPLER_ARG, 1 when unset
	GoogleAuth  bool    // the endpoint is Google's: send Google credentials
	ServiceName string  // OTEL_SERVICE_NAME, else K_SERVICE, else pscmessages
	// NoMetrics is OTEL_METRICS_EXPORTER=none: traces only, for a receiver
	// that takes no metrics (a Jaeger). Unset or otlp: metrics too.
	NoMetrics   bool
	enabled     bool
	endpointVar string // the variable the endpoint came from
}

// samplerNames are the OTEL_TRACES_SAMPLER values an SDK must honour; the
// first is the default.
var samplerNames = []string{"parentbased_always_on", "parentbased_always_off", "parentbased_traceidratio", "always_on", "always_off", "traceidratio"}

func loadSettings(getenv func(string) string) (Settings, error) {
	t := Settings{ServiceName: serviceName(getenv)}
	switch v := strings.ToLower(strings.TrimSpace(getenv("OTEL_SDK_DISABLED"))); v {
	case "", "false":
	case "true":
		return t, nil
	default:
		return t, &store.ConfigError{Var: "OTEL_SDK_DISABLED", Msg: "must be true or false"}
	}
	// Each variable read by name: cmd/pscmessages's deploy checks list the
	// variables the code reads from these calls.
	var endpoint string
	endpoint, t.endpointVar = getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"), "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
	if endpoint == "" {
		endpoint, t.endpointVar = getenv("OTEL_EXPORTER_OTLP_ENDPOINT"), "OTEL_EXPORTER_OTLP_ENDPOINT"
	}
	t.Protocol = getenv("OTEL_EXPORTER_OTLP_PROTOCOL")
	if v := getenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"); v != "" {
		t.Protocol = v
	}
	switch t.Protocol {
	case "":
		t.Protocol = "http/protobuf"
	case "http/protobuf", "grpc":
	default:
		return t, &store.ConfigError{Var: "OTEL_EXPORTER_OTLP_PROTOCOL", Msg: "must be http/protobuf or grpc (the Go exporters send no JSON)"}
	}
	switch getenv("OTEL_METRICS_EXPORTER") {
	case "", "otlp":
	case "none":
		t.NoMetrics = true
	default:
		return t, &store.ConfigError{Var: "OTEL_METRICS_EXPORTER", Msg: "must be otlp (the default) or none"}
	}
	t.Ratio = 1
	if v := getenv("OTEL_TRACES_SAMPLER_ARG"); v != "" {
		f, err := strconv.ParseFloat(v, 64)
		if err != nil || f < 0 || f > 1 {
			return t, &store.ConfigError{Var: "OTEL_TRACES_SAMPLER_ARG", Msg: "must be a ratio from 0 to 1"}
		}
		t.Ratio = f
	}
	// A value the SDK would silently ignore is refused instead.
	switch t.Sampler = getenv("OTEL_TRACES_SAMPLER"); {
	case t.Sampler == "":
		t.Sampler = samplerNames[0]
	case !slices.Contains(samplerNames, t.Sampler):
		return t, &store.ConfigError{Var: "OTEL_TRACES_SAMPLER", Msg: "must be one of " + strings.Join(samplerNames, ", ") + " (the first is the default)"}
	}
	if endpoint == "" {
		return t, nil
	}
	u, err := url.Parse(endpoint)
	if err != nil || u.Host == "" {
		return t, &store.ConfigError{Var: t.endpointVar, Msg: "must be a URL such as http://127.0.0.1:4318 or https://telemetry.googleapis.com"}
	}
	t.GoogleAuth = u.Hostname() == GoogleTelemetryHost
	t.enabled = true
	return t, nil
}

// An SDK installs OpenTelemetry's SDK as the process's global providers,
// exporting as s asks, and returns it through Install. Package
// example.com/pscmessages/cmd/telemetry/otlp is the one with OTLP exporters.
type SDK func(s Settings) (*Telemetry, error)

var (
	registeredMu sync.Mutex
	registered   SDK
)

// Register makes sdk the one Setup installs when the environment asks for
// telemetry. Package otlp registers itself when imported: the function's
// package imports it only in a build with the otlp tag, so that a binary
// built without (the local runner, by default) compiles and links neither
// the SDK nor the exporters and their gRPC.
func Register(sdk SDK) {
	registeredMu.Lock()
	defer registeredMu.Unlock()
	registered = sdk
}

func registeredSDK() SDK {
	registeredMu.Lock()
	defer registeredMu.Unlock()
	return registered
}

// errNoSDK is the setting that asks for telemetry in a build without an SDK.
func errNoSDK(s Settings) error {
	return &store.ConfigError{Var: s.endpointVar,
		Msg: "asks for telemetry, but this binary was built without it: build with -tags otlp (go run -tags otlp ./cmd/pscmessages, or ./cmd/pscpubsub; the deploys in cloudbuild.yaml set GOFLAGS=-tags=otlp)"}
}

// Telemetry is the process's SDK; nil when telemetry is off, and then every
// method does nothing.
type Telemetry struct {
	// Tracer and Meter are the function's own, on the SDK's providers.
	Tracer trace.Tracer
	Meter  metric.Meter

	requestDuration metric.Float64Histogram
	flush, shutdown func(context.Context) error
}

// Check reports what is wrong with the OTEL_* variables, naming the
// variable, without setting anything up: a value out of range, or an
// endpoint in a build that has no SDK to send to it.
func Check(getenv func(string) string) error {
	ts, err := loadSettings(getenv)
	if err == nil && ts.enabled && registeredSDK() == nil {
		err = errNoSDK(ts)
	}
	return err
}

// Setup installs sdk (nil: the registered one) when the environment asks
// for telemetry, and returns nil (nothing installed) otherwise. A given sdk
// is installed without an endpoint: tests put in-process exporters there.
func Setup(getenv func(string) string, sdk SDK) (*Telemetry, error) {
	ts, err := loadSettings(getenv)
	if err != nil || (!ts.enabled && sdk == nil) {
		return nil, err
	}
	if sdk == nil {
		if sdk = registeredSDK(); sdk == nil {
			return nil, errNoSDK(ts)
		}
	}
	return sdk(ts)
}

// Install makes tp and mp the process's global providers (the store traces
// and measures through them), with the propagators of Cloud Run's and W3C
// trace context, and returns the function's Telemetry on them; flush
// exports the spans ended so far, shutdown flushes and stops both.
func Install(tp trace.TracerProvider, mp metric.MeterProvider, flush, shutdown func(context.Context) error) (*Telemetry, error) {
	prop := propagation.NewCompositeTextMapPropagator(cloudTraceContext{}, propagation.TraceContext{}, propagation.Baggage{})
	otel.SetTracerProvider(tp)
	otel.SetMeterProvider(mp)
	otel.SetTextMapPropagator(prop)
	t := &Telemetry{Tracer: tp.Tracer(instrumentationName), Meter: mp.Meter(instrumentationName), flush: flush, shutdown: shutdown}
	var err error
	t.requestDuration, err = t.Meter.Float64Histogram("http.server.request.duration",
		metric.WithDescription("Duration of HTTP server requests"), metric.WithUnit("s"),
		// The HTTP semantic conventions' advised boundaries.
		metric.WithExplicitBucketBoundaries(0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10))
	if err != nil {
		return nil, errors.Join(err, shutdown(context.Background()))
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

// Shutdown flushes what is buffered and stops exporting, within
// FlushTimeout.
func (t *Telemetry) Shutdown() error {
	if t == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), FlushTimeout)
	defer cancel()
	return t.shutdown(ctx)
}

// ForceFlush exports the spans ended so far.
func (t *Telemetry) ForceFlush(ctx context.Context) error {
	if t == nil {
		return nil
	}
	return t.flush(ctx)
}
