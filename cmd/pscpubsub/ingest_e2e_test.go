//go:build e2e

package main

// The ingest paths Google recommends, through the official emulator: its
// own push (wrapped and unwrapped) into IngestPubSub, and the pull ingester
// under load through a kill -9 and an emulator restart.

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"cloud.google.com/go/pubsub/v2"
	"cloud.google.com/go/pubsub/v2/apiv1/pubsubpb"
)

// emuClient is a client of env's emulator.
func emuClient(t testing.TB, env *emuEnv) *pubsub.Client {
	t.Helper()
	c, err := pubsub.NewClient(context.Background(), env.emu.Project, emulatorOptions(env.emu.Addr)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func emuTopic(env *emuEnv, topic string) string {
	return "projects/" + env.emu.Project + "/topics/" + topic
}

func emuSub(env *emuEnv, sub string) string {
	return "projects/" + env.emu.Project + "/subscriptions/" + sub
}

// createTopic creates topic, and a subscription for each config given.
func createTopic(t testing.TB, c *pubsub.Client, name string) {
	t.Helper()
	if _, err := c.TopicAdminClient.CreateTopic(context.Background(), &pubsubpb.Topic{Name: name}); err != nil {
		t.Fatal(err)
	}
}

func createSub(t testing.TB, c *pubsub.Client, s *pubsubpb.Subscription) {
	t.Helper()
	if _, err := c.SubscriptionAdminClient.CreateSubscription(context.Background(), s); err != nil {
		t.Fatal(err)
	}
}

// emuPublish publishes payloads and returns once the emulator confirmed each.
func emuPublish(t testing.TB, c *pubsub.Client, topic string, payloads [][]byte) {
	t.Helper()
	if err := tryEmuPublish(c, topic, payloads); err != nil {
		t.Fatal(err)
	}
}

func tryEmuPublish(c *pubsub.Client, topic string, payloads [][]byte) error {
	ctx := context.Background()
	pub := c.Publisher(topic)
	defer pub.Stop()
	rs := make([]*pubsub.PublishResult, len(payloads))
	for i, p := range payloads {
		rs[i] = pub.Publish(ctx, &pubsub.Message{Data: p})
	}
	for i, r := range rs {
		if _, err := r.Get(ctx); err != nil {
			return fmt.Errorf("message %d: %w", i, err)
		}
	}
	return nil
}

// serveIngest starts the runner serving IngestPubSub alone at every path,
// as Cloud Run does with --function=IngestPubSub, without the runner's own
// Pub/Sub bridge: the emulator pushes.
func serveIngest(t testing.TB, url string) *runner {
	t.Helper()
	r := startRunner(t, runnerOptions{host: "127.0.0.1", env: map[string]string{"DATABASE_URL": url, "FUNCTION_TARGET": "IngestPubSub", "LOG_LEVEL": "debug"},
		unset: psUnset, cleanExit: true})
	select {
	case <-r.ready:
	case <-r.exited:
		t.Fatalf("serve exited: %s", r.stderr.String())
	case <-time.After(60 * time.Second):
		t.Fatal("serve did not start in 60 s")
	}
	return r
}

// TestOfficialEmulatorPushWrappedAndUnwrapped: the emulator's own push
// subscriptions, one without the wrapper (metadata as headers) and then one
// with it beside it, deliver into IngestPubSub; every message is stored
// once, however many subscriptions and wrappings delivered it.
func TestOfficialEmulatorPushWrappedAndUnwrapped(t *testing.T) {
	env := newEmuEnv(t)
	url := env.database(t)
	s := serveIngest(t, url)
	c := emuClient(t, env)
	const topic = "push-topic"
	createTopic(t, c, emuTopic(env, topic))
	endpoint := s.base + "/projects/" + env.emu.Project + "/topics/" + topic
	createSub(t, c, &pubsubpb.Subscription{Name: emuSub(env, "unwrapped"), Topic: emuTopic(env, topic), AckDeadlineSeconds: 60,
		PushConfig: &pubsubpb.PushConfig{PushEndpoint: endpoint, Wrapper: &pubsubpb.PushConfig_NoWrapper_{NoWrapper: &pubsubpb.PushConfig_NoWrapper{WriteMetadata: true}}}})

	first, wantFirst := psContents("unwrapped", 50)
	emuPublish(t, c, emuTopic(env, topic), first)
	psWaitFor(t, 60*time.Second, "the unwrapped pushes stored", func() bool { return psStoredRows(t, url) == len(wantFirst) })
	psAssertStoredOnce(t, url, "unwrapped", wantFirst)

	// Now a wrapped subscription beside it: each message comes twice, in
	// both forms.
	createSub(t, c, &pubsubpb.Subscription{Name: emuSub(env, "wrapped"), Topic: emuTopic(env, topic), AckDeadlineSeconds: 60,
		PushConfig: &pubsubpb.PushConfig{PushEndpoint: endpoint}})
	both, wantBoth := psContents("both", 50)
	emuPublish(t, c, emuTopic(env, topic), both)
	psWaitFor(t, 60*time.Second, "the doubly pushed messages stored", func() bool {
		return psStoredRows(t, url) >= len(wantFirst)+len(wantBoth)
	})
	// Both subscriptions must have delivered everything before the count
	// means anything: the second delivery of each message is logged as
	// already stored.
	psWaitFor(t, 60*time.Second, "the second delivery of each message", func() bool {
		return strings.Count(s.stderr.String()+s.stdout.String(), "redelivered event already stored") >= len(wantBoth)
	})
	psAssertStoredOnce(t, url, "both", wantBoth)
	psAssertStoredOnce(t, url, "unwrapped", wantFirst)
	if n := psQueryInt(t, url, "SELECT count(*) FROM dead_letters"); n != 0 {
		t.Fatalf("%d dead letters, want none", n)
	}
}

// TestPullIngesterUnderLoad: the pull ingester stores every published
// message exactly once (or keeps it as a dead letter) while it is killed
// with SIGKILL mid-stream and restarted, and while the emulator itself
// restarts (losing what it held, as an emulator does: the publisher sends
// again what was not stored, as a publisher with its own outbox would).
func TestPullIngesterUnderLoad(t *testing.T) {
	env := newEmuEnv(t)
	url := env.database(t)
	c := emuClient(t, env)
	const topic, sub = "bulk-topic", "bulk-pull"
	setup := func() {
		createTopic(t, c, emuTopic(env, topic))
		createSub(t, c, &pubsubpb.Subscription{Name: emuSub(env, sub), Topic: emuTopic(env, topic), AckDeadlineSeconds: 10})
	}
	setup()
	startPull := func() *runner {
		return startRunner(t, runnerOptions{program: pscpullBinary(t), args: []string{"-subscription", sub, "-topic", topic},
			env:   map[string]string{"DATABASE_URL": url, "PUBSUB_EMULATOR_HOST": env.emu.Addr, "PUBSUB_PROJECT_ID": env.emu.Project},
			unset: psUnset})
	}
	p := startPull()

	const n = 6000
	payloads, want := psContents("load", n)
	poison := [][]byte{[]byte(`{"content": 1}`), []byte("\xff not UTF-8")}
	// Phase 1: publish in chunks; kill -9 the ingester a third of the way.
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; i < n/2; i += 100 {
			if err := tryEmuPublish(c, emuTopic(env, topic), payloads[i:i+100]); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	psWaitFor(t, 120*time.Second, "a third stored", func() bool { return psStoredRows(t, url) >= n/6 })
	p.stopWith(t, syscall.SIGKILL)
	p = startPull()
	wg.Wait()
	emuPublish(t, c, emuTopic(env, topic), poison)
	psWaitFor(t, 120*time.Second, "the first half stored", func() bool { return psStoredRows(t, url) >= n/2 })
	// The poison too, before the restart below could lose it: the test
	// sends again only what the restart lost of the second half.
	psWaitFor(t, 120*time.Second, "the poison kept", func() bool {
		return psQueryInt(t, url, "SELECT count(*) FROM dead_letters") >= len(poison)
	})

	// Phase 2: the emulator restarts while the second half streams in.
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := n / 2; i < 3*n/4; i += 100 {
			if err := tryEmuPublish(c, emuTopic(env, topic), payloads[i:i+100]); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	psWaitFor(t, 120*time.Second, "some of the second half stored", func() bool { return psStoredRows(t, url) >= n/2+n/8 })
	wg.Wait()
	env.emu.restart(t)
	setup()
	// What the emulator lost before the ingester stored it is sent again:
	// a new message (new id and publish time) with the same content.
	time.Sleep(2 * time.Second)
	var resend [][]byte
	for i := n / 2; i < 3*n/4; i++ {
		if psQueryInt(t, url, "SELECT count(*) FROM messages WHERE content = $1", want[i]) == 0 {
			resend = append(resend, payloads[i])
		}
	}
	t.Logf("%d messages lost by the emulator's restart, published again", len(resend))
	emuPublish(t, c, emuTopic(env, topic), resend)
	emuPublish(t, c, emuTopic(env, topic), payloads[3*n/4:])
	psWaitFor(t, 180*time.Second, "every message stored", func() bool { return psStoredRows(t, url) >= n })
	time.Sleep(3 * time.Second) // redeliveries of what was stored, if any, arrive meanwhile
	psAssertStoredOnce(t, url, "load", want)
	if d := psQueryInt(t, url, "SELECT count(*) FROM dead_letters"); d != len(poison) {
		t.Fatalf("%d dead letters, want %d", d, len(poison))
	}
	p.stop(t)
}
