package main

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"testing"
	"time"
)

// TestRestartedRunnerKeepsTheSubscriptionsEpoch: a runner restarted against
// the same emulator qualifies message ids with the epoch its subscription
// was labelled with, not a new one, so a message the first runner delivered
// but never acknowledged (the function stored it; the ack was lost with the
// runner) comes back under the same ce-id and the function recognises the
// redelivery. Under a new epoch it would be a new id, stored twice.
func TestRestartedRunnerKeepsTheSubscriptionsEpoch(t *testing.T) {
	env := newPSClient(t)
	const topic = "restart"
	var (
		mu    sync.Mutex
		ceIDs []string // every ce-id delivered, in order
	)
	// run starts a runner on the same subscription whose deliveries are
	// answered status, and returns its stop.
	run := func(status int) func() {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			io.Copy(io.Discard, r.Body)
			mu.Lock()
			ceIDs = append(ceIDs, r.Header.Get("Ce-Id"))
			mu.Unlock()
			w.WriteHeader(status)
		}))
		t.Cleanup(srv.Close)
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		stop, err := startPubSub(ctx, pubsubConfig{
			Project: psProject, Topic: topic, Subscription: topic + "-ingest", Concurrency: 1,
			Endpoint: srv.URL + "/IngestPubSub", Emulator: env.fake.Addr,
			Out: io.Discard, Log: slog.New(slog.DiscardHandler),
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(stop) // a no-op once called
		return stop
	}
	delivered := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(ceIDs)
	}

	// The first runner: the function answers 503, so nothing is acked.
	stop := run(http.StatusServiceUnavailable)
	ids := env.publishAll(t, topic, [][]byte{[]byte("stored, never acked")})
	psWaitFor(t, 15*time.Second, "the first runner's delivery", func() bool { return delivered() > 0 })
	stop()
	first := delivered()

	// The restarted runner: the function answers 204, so the message is acked.
	run(http.StatusNoContent)
	psWaitFor(t, 30*time.Second, "the restarted runner's delivery and ack", func() bool {
		return delivered() > first && env.fake.Message(ids[0]).Acks > 0
	})
	mu.Lock()
	defer mu.Unlock()
	if distinct := slices.Compact(slices.Clone(ceIDs)); len(distinct) != 1 {
		t.Fatalf("one message delivered under %d ce-ids %q across a runner restart: its redelivery would be stored again", len(distinct), distinct)
	}
	if want := psIDPrefix(t, env.client, topic) + ids[0]; ceIDs[0] != want {
		t.Fatalf("ce-id %q, want %q (the emulator's id qualified by the subscription's epoch)", ceIDs[0], want)
	}
}
