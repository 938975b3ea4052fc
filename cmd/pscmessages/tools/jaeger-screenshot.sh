#!/usr/bin/env bash
# Takes the README's picture: one message published with the Go Pub/Sub
# client's tracing on, through the official emulator and the runner, as
# Jaeger's UI shows its trace, saved by headless Chromium.
#
#   bash cmd/pscmessages/tools/jaeger-screenshot.sh
#
# Needs what the end-to-end tier needs (Jaeger at JAEGER_BIN, see .ci/tools;
# gcloud's Pub/Sub emulator), Debian's chromium, and JAEGER_UI: the build
# folder of jaeger-ui v1.75.0 (its sources, npm ci, then in
# packages/jaeger-ui: npx vite build), since a Jaeger built from the Go module
# alone serves a placeholder page instead of its UI.
set -euo pipefail
: "${JAEGER_UI:?set JAEGER_UI to the jaeger-ui build folder (see above)}"
cd "$(dirname "$0")/../../.."
out="$PWD/cmd/pscmessages/jaeger-trace.png"
JAEGER_SCREENSHOT="$out" go test -tags e2e -count=1 -run 'TestJaegerTraces/published' ./cmd/pscpubsub
echo "wrote $out"
