package main

// What the runner and the publish command do about an emulator that is not
// there, goes away, or comes back empty.

import (
	"context"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"example.com/pscmessages/cmd/internal/pubsubclient"
)

// emulatorWatchInterval is how often the runner checks that the emulator
// still listens, so that an outage is reported while it lasts.
const emulatorWatchInterval = 2 * time.Second

// officialEmulator reports whether addr is the official emulator, which
// answers plain HTTP (its REST API, the one gcloud uses) beside gRPC; pstest
// answers gRPC only.
func officialEmulator(ctx context.Context, addr string) bool {
	ctx, cancel := context.WithTimeout(ctx, pubsubclient.DialTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/", nil)
	if err != nil {
		return false
	}
	resp, err := (&http.Client{Transport: &http.Transport{}}).Do(req)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// watchEmulator logs when the emulator at addr stops accepting connections
// and when it is back, until ctx ends. The client library retries quietly
// meanwhile; this is what tells the user why nothing is delivered. A
// restarted emulator has lost the topic and subscription: when it is back,
// or whenever lost reports the subscription gone (a restart quicker than
// one interval, a subscription deleted by hand), resync recreates both at
// once, and is called again every interval until it succeeds.
func watchEmulator(ctx context.Context, addr string, log *slog.Logger, lost func(context.Context) bool, resync func() bool) {
	down, pending := false, false
	t := time.NewTicker(emulatorWatchInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		err := pubsubclient.CheckEmulator(ctx, addr)
		switch {
		case ctx.Err() != nil:
			return
		case err != nil:
			if !down {
				down = true
				log.Error("the Pub/Sub emulator is gone; waiting for it to come back", "error", err.Error())
			}
			continue
		case down:
			down, pending = false, true
			log.Warn("the Pub/Sub emulator at PUBSUB_EMULATOR_HOST=" + addr + " answers again; checking the topic and subscription, which a restarted emulator has lost")
		case !pending:
			cctx, cancel := context.WithTimeout(ctx, pubsubclient.DialTimeout)
			pending = lost(cctx)
			cancel()
		}
		if pending {
			pending = !resync()
		}
	}
}

// epochLabel is the label of the runner's subscription that holds the
// emulator's epoch: the time the subscription was created, which is the
// emulator's start for a subscription the runner made.
const epochLabel = "pscmessages-epoch"

// newEpoch is a label value (lower case, digits, - and _): it qualifies the
// message ids of one emulator lifetime.
func newEpoch() string {
	return strings.ToLower(strings.ReplaceAll(time.Now().UTC().Format("20060102T150405.000Z"), ".", "_"))
}

// idPrefix is what the runner puts before an emulator's message ids.
// Emulators number messages afresh each time they start (pstest m0, m1, ...;
// the official emulator 1, 2, ...), while IngestPubSub deduplicates by topic
// and message id and the local database outlives the emulator: without it the
// first message after a restart would be taken for the first one before, and
// dropped (same content) or dead-lettered (other content). Real message ids
// never repeat in a topic; qualifying an emulator's by its epoch keeps that
// promise. The epoch lives in the emulator, on the subscription, so a runner
// started again against the same emulator uses the same prefix and a
// redelivery is still recognised.
func idPrefix(epoch string) string {
	if epoch == "" {
		return ""
	}
	return epoch + "-"
}
