//go:build otlp

package function

// A build with the otlp tag (the deploys in cloudbuild.yaml, and
// `go run -tags otlp ./cmd/pscmessages` for a laptop's trace backend) links
// the OpenTelemetry SDK and its OTLP exporters; see package telemetry.
import _ "example.com/pscmessages/cmd/telemetry/otlp"
