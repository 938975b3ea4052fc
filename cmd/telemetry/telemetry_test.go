package telemetry

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"go.opentelemetry.io/otel"

	"example.com/pscmessages/store"
)

// Off (no endpoint, or OTEL_SDK_DISABLED=true) nothing is installed: the
// handlers are served unwrapped, the global providers stay the API's no-ops,
// and a store opened then has no observer (see store/telemetry.go).
func TestTelemetryOffInstallsNothing(t *testing.T) {
	for _, env := range []map[string]string{
		{},
		{"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1"},
		{"OTEL_SERVICE_NAME": "x", "OTEL_TRACES_SAMPLER": "always_on"},
	} {
		tel, err := Setup(func(k string) string { return env[k] }, nil)
		if err != nil || tel != nil {
			t.Fatalf("%v: telemetry %v, %v; want none", env, tel, err)
		}
		h := http.HandlerFunc(func(http.ResponseWriter, *http.Request) {})
		if got := tel.Instrument(h, func(*http.Request) string { return "/" }); fmt.Sprintf("%p", got) != fmt.Sprintf("%p", h) {
			t.Fatalf("%v: the handler was wrapped", env)
		}
		if _, sdk := otel.GetTracerProvider().(interface{ ForceFlush(context.Context) error }); sdk {
			t.Fatalf("%v: an SDK tracer provider is installed", env)
		}
	}
}

// A binary built without an SDK (the runner without the otlp tag) refuses
// an endpoint at start, naming the variable and the tag, rather than
// dropping what the operator asked to see.
func TestEndpointWithoutSDKNamesTheVariableAndTheTag(t *testing.T) {
	if registeredSDK() != nil {
		t.Fatal("this test binary registered an SDK; package telemetry's own tests must not import package otlp")
	}
	for _, v := range []string{"OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"} {
		getenv := func(k string) string { return map[string]string{v: "http://127.0.0.1:4318"}[k] }
		for name, err := range map[string]error{"Check": Check(getenv), "Setup": func() error { _, err := Setup(getenv, nil); return err }()} {
			var ce *store.ConfigError
			if !errors.As(err, &ce) || ce.Var != v || !strings.Contains(ce.Msg, "-tags otlp") {
				t.Errorf("%s with %s set: %v; want a ConfigError naming %s and the otlp tag", name, v, err, v)
			}
		}
	}
	if err := Check(func(string) string { return "" }); err != nil {
		t.Errorf("with no endpoint: %v; want no error", err)
	}
}
