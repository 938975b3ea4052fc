//go:build otlp || e2e

package function

// A build with the otlp tag (the deploys in cloudbuild.yaml, and
// `go run -tags otlp ./cmd/pscmessages` for a laptop's trace backend) links
// the OpenTelemetry SDK and its OTLP exporters; see package telemetry. So
// does the end-to-end tier's, whose runners export to a real Jaeger: the
// import here, a dependency of the function's package, registers the SDK
// before the function's own variables ask for it.
import _ "example.com/pscmessages/cmd/telemetry/otlp"
