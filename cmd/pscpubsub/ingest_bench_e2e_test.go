//go:build e2e

package main

// Publish-to-committed-row through the official emulator, per ingest path.
// Run each sub-benchmark in its own process and alternate them (see
// cmd/pscbench/BENCHMARKS.md, "Ingest paths"): the emulator's JVM warms up and the
// machine is shared.

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"cloud.google.com/go/pubsub/v2"
	"cloud.google.com/go/pubsub/v2/apiv1/pubsubpb"

	"example.com/pscmessages/store/localpg"
	"example.com/pscmessages/store/localpg/localpgtest"
)

// BenchmarkIngestEmulator: each iteration is one message, published with the
// Go client, counted when its row is committed (the ceiling: when a no-op
// subscriber acknowledged it). msgs/s is b.N over the time from the first
// publish to the last row.
func BenchmarkIngestEmulator(b *testing.B) {
	emu := startEmulator(b, emuProject)
	cluster := localpgtest.Start(b, localpg.Options{Durable: true})
	c, err := pubsub.NewClient(context.Background(), emu.Project, emulatorOptions(emu.Addr)...)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	env := &emuEnv{emu: emu, cluster: cluster}
	run := 0
	// newTopic makes a topic and a pull subscription for one run.
	newTopic := func(b *testing.B) (topic, sub string) {
		run++
		topic, sub = fmt.Sprintf("bench-%d", run), fmt.Sprintf("bench-%d-sub", run)
		createTopic(b, c, emuTopic(env, topic))
		createSub(b, c, &pubsubpb.Subscription{Name: emuSub(env, sub), Topic: emuTopic(env, topic), AckDeadlineSeconds: 60})
		return topic, sub
	}
	measure := func(b *testing.B, topic string, done func() bool) {
		payloads, _ := psContents(fmt.Sprintf("b%d", run), b.N)
		b.ResetTimer()
		start := time.Now()
		emuPublish(b, c, emuTopic(env, topic), payloads)
		for !done() {
			time.Sleep(5 * time.Millisecond)
		}
		elapsed := time.Since(start)
		b.StopTimer()
		b.ReportMetric(float64(b.N)/elapsed.Seconds(), "msgs/s")
	}

	b.Run("ceiling", func(b *testing.B) {
		topic, sub := newTopic(b)
		var acked atomic.Int64
		ctx, cancel := context.WithCancel(context.Background())
		recv := make(chan error, 1)
		s := c.Subscriber(emuSub(env, sub))
		s.ReceiveSettings.MaxOutstandingMessages = 1000
		go func() { recv <- s.Receive(ctx, func(_ context.Context, m *pubsub.Message) { m.Ack(); acked.Add(1) }) }()
		measure(b, topic, func() bool { return acked.Load() >= int64(b.N) })
		cancel()
		<-recv
	})
	for _, conc := range []int{1, 8, 32} {
		b.Run(fmt.Sprintf("push-c%d", conc), func(b *testing.B) {
			topic, _ := newTopic(b)
			url := env.database(b)
			// The runner's bridge pulls and POSTs each message to
			// IngestPubSub, as a push subscription does, conc at once.
			psStartServe(b, map[string]string{"DATABASE_URL": url, "PUBSUB_EMULATOR_HOST": emu.Addr, "PUBSUB_PROJECT_ID": emu.Project, "PUBSUB_TOPIC": topic},
				"-pubsub-concurrency", fmt.Sprint(conc))
			measure(b, topic, func() bool { return psStoredRows(b, url) >= b.N })
		})
	}
	b.Run("pull", func(b *testing.B) {
		topic, sub := newTopic(b)
		url := env.database(b)
		p := startRunner(b, runnerOptions{program: pscpullBinary(b), args: []string{"-subscription", sub, "-topic", topic},
			env:   map[string]string{"DATABASE_URL": url, "PUBSUB_EMULATOR_HOST": emu.Addr, "PUBSUB_PROJECT_ID": emu.Project},
			unset: psUnset, cleanExit: true})
		// The first message creates the schema; wait for it outside the clock.
		emuPublish(b, c, emuTopic(env, topic), [][]byte{[]byte("warm-up")})
		psWaitFor(b, 60*time.Second, "the pull ingester's first row", func() bool { return psStoredRows(b, url) == 1 })
		measure(b, topic, func() bool { return psStoredRows(b, url) >= b.N+1 })
		p.stop(b)
	})
}
