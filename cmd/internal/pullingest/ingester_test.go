package pullingest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"cloud.google.com/go/pubsub/v2"
	"cloud.google.com/go/pubsub/v2/apiv1/pubsubpb"
	"cloud.google.com/go/pubsub/v2/pstest"
	"google.golang.org/api/option"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

const (
	project = "p"
	topic   = "projects/p/topics/t"
	subName = "projects/p/subscriptions/s"
)

// newSubscription starts pstest with a topic and subscription, publishes n
// messages and returns a client and the server.
func newSubscription(t *testing.T, n int) (*pubsub.Client, *pstest.Server) {
	t.Helper()
	srv := pstest.NewServerWithAddress("127.0.0.1:0")
	t.Cleanup(func() { srv.Close() })
	client, err := pubsub.NewClient(context.Background(), project, option.WithEndpoint(srv.Addr), option.WithoutAuthentication(),
		option.WithGRPCDialOption(grpc.WithTransportCredentials(insecure.NewCredentials())))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	ctx := context.Background()
	if _, err := client.TopicAdminClient.CreateTopic(ctx, &pubsubpb.Topic{Name: topic}); err != nil {
		t.Fatal(err)
	}
	if _, err := client.SubscriptionAdminClient.CreateSubscription(ctx, &pubsubpb.Subscription{Name: subName, Topic: topic, AckDeadlineSeconds: 10}); err != nil {
		t.Fatal(err)
	}
	pub := client.Publisher(topic)
	defer pub.Stop()
	var rs []*pubsub.PublishResult
	for i := range n {
		rs = append(rs, pub.Publish(ctx, &pubsub.Message{Data: []byte(fmt.Sprint("m", i))}))
	}
	for _, r := range rs {
		if _, err := r.Get(ctx); err != nil {
			t.Fatal(err)
		}
	}
	return client, srv
}

// TestAckOnlyAfterStoreAndNackTransient: every message is acknowledged once
// its store call returned nil, and only then; a transient failure is nacked
// and delivered again; the store calls in flight never exceed the bound.
func TestAckOnlyAfterStoreAndNackTransient(t *testing.T) {
	const n, bound = 200, 16
	client, srv := newSubscription(t, n)
	var (
		mu        sync.Mutex
		calls     = map[string]int{}
		stored    = map[string]bool{}
		inFlight  atomic.Int64
		maxFlight atomic.Int64
	)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan Stats, 1)
	go func() {
		st, err := Run(ctx, client, Config{Subscription: subName, Topic: topic, MaxOutstandingMessages: bound, NackDelay: 10 * time.Millisecond}, func(ctx context.Context, gotTopic string, m *pubsub.Message) error {
			if gotTopic != topic {
				t.Errorf("topic %q", gotTopic)
			}
			f := inFlight.Add(1)
			defer inFlight.Add(-1)
			for {
				old := maxFlight.Load()
				if f <= old || maxFlight.CompareAndSwap(old, f) {
					break
				}
			}
			time.Sleep(time.Millisecond)
			mu.Lock()
			defer mu.Unlock()
			calls[m.ID]++
			if calls[m.ID] == 1 && len(calls)%3 == 0 {
				return errors.New("database unavailable")
			}
			stored[m.ID] = true
			return nil
		})
		if err != nil {
			t.Error(err)
		}
		done <- st
	}()
	deadline := time.Now().Add(30 * time.Second)
	for {
		mu.Lock()
		k := len(stored)
		mu.Unlock()
		if k == n {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d stored in 30 s", k, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Every stored message is acknowledged: nothing is left to deliver.
	deadline = time.Now().Add(10 * time.Second)
	for {
		acked := 0
		for _, m := range srv.Messages() {
			if m.Acks > 0 {
				acked++
			}
		}
		if acked == n {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d acknowledged", acked, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	st := <-done
	if st.Acked < n || st.Nacked == 0 {
		t.Fatalf("stats %+v: want %d acked and some nacked", st, n)
	}
	if m := maxFlight.Load(); m > bound {
		t.Fatalf("%d store calls at once, more than MaxOutstandingMessages %d", m, bound)
	}
}

// TestDrainStoresWhatWasTaken: when the context ends, the store calls in
// flight finish (their context does not end with it) and their messages are
// acknowledged before Run returns.
func TestDrainStoresWhatWasTaken(t *testing.T) {
	client, srv := newSubscription(t, 20)
	ctx, cancel := context.WithCancel(context.Background())
	started := make(chan struct{}, 100)
	release := make(chan struct{})
	var storedCtxErr atomic.Value
	done := make(chan error, 1)
	go func() {
		_, err := Run(ctx, client, Config{Subscription: subName, Topic: topic, MaxOutstandingMessages: 4, DrainTimeout: 20 * time.Second}, func(sctx context.Context, _ string, m *pubsub.Message) error {
			started <- struct{}{}
			<-release
			if err := sctx.Err(); err != nil {
				storedCtxErr.Store(err)
			}
			return nil
		})
		done <- err
	}()
	<-started
	cancel()
	time.Sleep(100 * time.Millisecond)
	close(release)
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Run did not return after the drain")
	}
	if err := storedCtxErr.Load(); err != nil {
		t.Fatalf("a store call saw its context end at shutdown: %v", err)
	}
	acked := 0
	for _, m := range srv.Messages() {
		if m.Acks > 0 {
			acked++
		}
	}
	if acked == 0 || acked > 4+len(started) {
		t.Fatalf("%d acknowledged after the drain; want the ones taken", acked)
	}
}

// TestMissingSubscriptionStopsAtStart: a subscription that does not exist
// is an error at once, not a silent wait.
func TestMissingSubscriptionStopsAtStart(t *testing.T) {
	client, _ := newSubscription(t, 0)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, err := Run(ctx, client, Config{Subscription: "projects/p/subscriptions/none", Topic: topic}, func(context.Context, string, *pubsub.Message) error { return nil })
	if err == nil || ctx.Err() != nil {
		t.Fatalf("Run = %v (context %v), want an error naming the subscription at once", err, ctx.Err())
	}
}
