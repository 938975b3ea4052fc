// Command pscpubsub is the Pub/Sub side of the messages function on one
// machine and in bulk: `go run ./cmd/pscpubsub` serves the functions as
// `go run ./cmd/pscmessages` does and delivers a topic's messages to
// IngestPubSub as Eventarc does, from the emulator at PUBSUB_EMULATOR_HOST or
// from one it starts in-process (pstest); publish sends messages to a topic.
// It is a command of its own because the Pub/Sub client, its gRPC stack and
// pstest take most of a first build: the runner users start for HTTP links
// none of them. The bulk ingester that cloudbuild.yaml deploys is
// cmd/pscpull, which links no pstest (and so no package testing).
package main

import (
	"os"

	"example.com/pscmessages/cmd/internal/localrun"
)

func main() {
	localrun.Main("pscpubsub", []localrun.Command{
		localrun.Serve(&pubsubFlags{}),
		{Name: "publish", Summary: "publish messages to a Pub/Sub topic (the emulator's, with PUBSUB_EMULATOR_HOST)", Run: runPublish},
	})
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}
