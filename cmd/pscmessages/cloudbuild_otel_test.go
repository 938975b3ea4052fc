package main

import (
	"net/url"
	"strings"
)

// cbJudgeTelemetry checks what _OTEL_EXPORT means in the requests: with
// "google" a deployed function exports OTLP over gRPC to Google's Telemetry
// API under its own service name; with "none" no OTEL_ variable is set, so no
// SDK runs.
func cbJudgeTelemetry(name string, env, subs map[string]string, fail func(string, ...any)) {
	if subs["_OTEL_EXPORT"] != "google" {
		for k := range env {
			if strings.HasPrefix(k, "OTEL_") {
				fail("%s: _OTEL_EXPORT=%s but %s is set", name, subs["_OTEL_EXPORT"], k)
			}
		}
		return
	}
	u, err := url.Parse(env["OTEL_EXPORTER_OTLP_ENDPOINT"])
	if err != nil || u.Scheme != "https" || u.Hostname() != "telemetry.googleapis.com" {
		fail("%s: OTEL_EXPORTER_OTLP_ENDPOINT=%q; want https://telemetry.googleapis.com", name, env["OTEL_EXPORTER_OTLP_ENDPOINT"])
	}
	// Over gRPC the exporter refreshes the account's token (cmd/telemetry/setup.go).
	if env["OTEL_EXPORTER_OTLP_PROTOCOL"] != "grpc" {
		fail("%s: OTEL_EXPORTER_OTLP_PROTOCOL=%q; want grpc", name, env["OTEL_EXPORTER_OTLP_PROTOCOL"])
	}
	if env["OTEL_SERVICE_NAME"] != name {
		fail("%s: OTEL_SERVICE_NAME=%q; traces would not name the service", name, env["OTEL_SERVICE_NAME"])
	}
}
