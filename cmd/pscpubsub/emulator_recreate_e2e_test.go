//go:build e2e

package main

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"cloud.google.com/go/pubsub/v2"
	"cloud.google.com/go/pubsub/v2/apiv1/pubsubpb"
)

// TestRecreationThatFailsKeepsWhatIsPublishedMeanwhile: when the runner
// recreates a restarted emulator's topic but not yet its subscription (the
// emulator refuses it, or answers too late), a message published to the
// topic meanwhile gets an id; the next attempt, which makes the
// subscription, must deliver it. Here the subscription's name is held by a
// subscription of another topic for the first attempt, as a stand-in for an
// emulator that fails it, and the message is published while that attempt
// retries.
func TestRecreationThatFailsKeepsWhatIsPublishedMeanwhile(t *testing.T) {
	emu := startEmulator(t, emuProject)
	ctx := context.Background()
	client, err := pubsub.NewClient(ctx, emuProject, emulatorOptions(emu.Addr)...)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	const prefix = "projects/" + emuProject
	topic, other, sub := prefix+"/topics/recreated", prefix+"/topics/squatter", prefix+"/subscriptions/recreated-sub"
	if _, err := client.TopicAdminClient.CreateTopic(ctx, &pubsubpb.Topic{Name: other}); err != nil {
		t.Fatal(err)
	}
	if _, err := client.SubscriptionAdminClient.CreateSubscription(ctx, &pubsubpb.Subscription{Name: sub, Topic: other}); err != nil {
		t.Fatal(err)
	}

	// Publish once the first attempt has created the topic.
	var published struct {
		sync.WaitGroup
		id  string
		err error
	}
	published.Add(1)
	go func() {
		defer published.Done()
		pub := client.Publisher(topic)
		defer pub.Stop()
		deadline := time.Now().Add(10 * time.Second)
		for {
			_, err := client.TopicAdminClient.GetTopic(ctx, &pubsubpb.GetTopicRequest{Topic: topic})
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				published.err = errors.New("the first attempt never created the topic")
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		published.id, published.err = pub.Publish(pctx, &pubsub.Message{Data: []byte("published meanwhile")}).Get(pctx)
	}()

	var pending time.Time
	first, cancel := context.WithTimeout(ctx, 3*time.Second)
	_, _, err = ensureSubscription(first, client, topic, sub, true, &pending)
	cancel()
	if err == nil {
		t.Fatal("the first attempt made the subscription although its name was taken")
	}
	published.Wait()
	if published.err != nil {
		t.Fatalf("publishing while the first attempt retried: %v", published.err)
	}
	t.Logf("published as %s while the first attempt failed (%v)", published.id, err)

	if err := client.SubscriptionAdminClient.DeleteSubscription(ctx, &pubsubpb.DeleteSubscriptionRequest{Subscription: sub}); err != nil {
		t.Fatal(err)
	}
	if _, created, err := ensureSubscription(ctx, client, topic, sub, true, &pending); err != nil || !created {
		t.Fatalf("the second attempt: created %v, %v", created, err)
	}
	if !pending.IsZero() {
		t.Errorf("after the rewind the pending time is still %v", pending)
	}

	rctx, stop := context.WithTimeout(ctx, 20*time.Second)
	defer stop()
	var got string
	err = client.Subscriber(sub).Receive(rctx, func(_ context.Context, m *pubsub.Message) {
		m.Ack()
		got = string(m.Data)
		stop()
	})
	if err != nil {
		t.Fatal(err)
	}
	if got != "published meanwhile" {
		t.Fatalf("the new subscription delivered %q within 20 s; want the message published while it could not be made", got)
	}
}
