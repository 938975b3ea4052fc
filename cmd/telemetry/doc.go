// Package telemetry is the function's OpenTelemetry: the SDK set up from
// the standard OTEL_* variables (by package otlp, which a build links only
// with the otlp tag; see Register), the HTTP server span and request-duration
// metric of every request (Instrument), the span and log correlation helpers
// (SpanError, LocalSpan), X-Cloud-Trace-Context, and the flush on SIGTERM.
// The function's package (the module's root) sets it up once per process
// and builds its own instruments on Tracer and Meter; the store traces its
// statements and batches through the global providers Setup installs. It
// lives below cmd/ only because the repository's top level is fixed; it is
// not internal so that the root package can import it.
//
// Configured only by the standard variables, so any OTLP
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
// OTEL_METRICS_EXPORTER=none sends traces only (otlp, the default, both),
// for receivers such as Jaeger that take no metrics.
//
// Sampling follows OTEL_TRACES_SAMPLER and OTEL_TRACES_SAMPLER_ARG; the
// default, parentbased_always_on, keeps the decision of the caller, so
// Cloud Run's own sampling of a request decides whether its spans are kept.
package telemetry
