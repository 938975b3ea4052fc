#!/usr/bin/env bash
# Takes the README's picture: one message published with the Go Pub/Sub
# client's tracing on, through the official emulator and the runner, as
# Jaeger's UI shows its trace, saved by headless Chromium.
#
#   bash cmd/pscmessages/tools/jaeger-screenshot.sh
#
# Needs what the end-to-end tier needs (Jaeger at JAEGER_BIN, see .ci/run;
# gcloud's Pub/Sub emulator) and Debian's chromium. Jaeger must serve its UI:
# a binary built from the Go module alone serves a placeholder page instead.
set -euo pipefail
cd "$(dirname "$0")/../../.."
out="$PWD/cmd/pscmessages/jaeger-trace.png"
JAEGER_SCREENSHOT="$out" go test -tags e2e -count=1 -run 'TestJaegerTraces/published' ./cmd/pscmessages
echo "wrote $out"
