package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"example.com/pscmessages/cmd/internal/linkcheck"
)

// linkedNowhere are packages the runner must not link: package testing
// (which registers its flags and drags test machinery into the binary users
// run; pstest imports it) and the Pub/Sub client with its gRPC API surface,
// which most of a first build would otherwise be spent compiling although
// serving over HTTP never uses it. cmd/pscpubsub links those (cmd/pscpull
// the client alone).
var linkedNowhere = []string{"testing", "cloud.google.com/go/pubsub/v2", "cloud.google.com/go/pubsub/v2/pstest"}

// TestRunnerLinksNeitherTestingNorPubSub lists what `go run
// ./cmd/pscmessages` links and fails on package testing, the Pub/Sub client
// and every package that imports them.
func TestRunnerLinksNeitherTestingNorPubSub(t *testing.T) {
	bad, err := linkcheck.Forbidden(".", "", linkedNowhere)
	if err != nil {
		t.Fatal(err)
	}
	if len(bad) > 0 {
		t.Errorf("the runner links %s; Pub/Sub belongs in cmd/pscpubsub, test helpers in _test.go files or packages only tests import", strings.Join(bad, ", "))
	}
}

// telemetrySDK are the packages only a build with the otlp tag links: the
// OpenTelemetry SDK, its OTLP exporters and gRPC, most of what a first
// `go run ./cmd/pscmessages` would otherwise compile. The deploys build
// with the tag (cloudbuild.yaml's GOFLAGS), and the end-to-end tier with
// e2e links them too; see package telemetry.
var telemetrySDK = []string{
	"go.opentelemetry.io/otel/sdk/trace",
	"go.opentelemetry.io/otel/sdk/metric",
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp",
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc",
	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetrichttp",
	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetricgrpc",
	"google.golang.org/grpc",
}

// TestRunnerLinksTheTelemetrySDKOnlyWithTheOtlpTag: the runner as users
// first run it links none of telemetrySDK; built with -tags otlp, as the
// deployed functions are, it links all of them.
func TestRunnerLinksTheTelemetrySDKOnlyWithTheOtlpTag(t *testing.T) {
	bad, err := linkcheck.Forbidden(".", "", telemetrySDK)
	if err != nil {
		t.Fatal(err)
	}
	if len(bad) > 0 {
		t.Errorf("without -tags otlp the runner links %s; only the root's otlp.go may import package otlp", strings.Join(bad, ", "))
	}
	missing, err := linkcheck.Missing(".", "otlp", telemetrySDK)
	if err != nil {
		t.Fatal(err)
	}
	if len(missing) > 0 {
		t.Errorf("with -tags otlp the runner (and so the deployed function) does not link %s", strings.Join(missing, ", "))
	}
}

func goCommand(t *testing.T) string {
	t.Helper()
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the go command is needed to list and build the commands: %v", err)
	}
	return goTool
}

// exitDetail adds a failed command's stderr to its error.
func exitDetail(err error) string {
	if ee, ok := err.(*exec.ExitError); ok {
		return err.Error() + ": " + string(ee.Stderr)
	}
	return err.Error()
}

// TestCommandsPassSettingsDown: no command hands settings to the function by
// changing its own environment; each reads its settings once and passes
// them (function.ConfigFromEnv, function.New).
func TestCommandsPassSettingsDown(t *testing.T) {
	var files []string
	for _, pattern := range []string{"../*/*.go", "../internal/*/*.go"} {
		m, err := filepath.Glob(pattern)
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, m...)
	}
	if len(files) == 0 {
		t.Fatal("no source files found under cmd")
	}
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		src, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for i, line := range strings.Split(string(src), "\n") {
			if strings.Contains(line, "os.Setenv(") && !strings.HasPrefix(strings.TrimSpace(line), "//") {
				t.Errorf("%s:%d sets the environment: %s", f, i+1, strings.TrimSpace(line))
			}
		}
	}
}
