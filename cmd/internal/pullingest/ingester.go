package pullingest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"time"

	"cloud.google.com/go/pubsub/v2"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Defaults of Config.
const (
	// DefaultMaxOutstandingMessages bounds the messages in flight: enough
	// to fill several of the store's batches (256 rows) while earlier ones
	// commit.
	DefaultMaxOutstandingMessages = 1000
	// DefaultMaxOutstandingBytes bounds the data in flight (64 MiB), far
	// below the library's 1 GB, so a backlog of large messages fits in a
	// 512 MiB instance with the copies decoding makes.
	DefaultMaxOutstandingBytes = 64 << 20
	// DefaultStoreTimeout bounds one store call, above the store's own
	// worst case (a cold pool open waits up to 30 s).
	DefaultStoreTimeout = 45 * time.Second
	// DefaultDrainTimeout bounds the drain on shutdown; Cloud Run sends
	// SIGKILL 10 s after SIGTERM, so what is not acknowledged by then is
	// delivered again, never lost.
	DefaultDrainTimeout = 8 * time.Second
	// DefaultNackDelay is how long a message that failed is held before its
	// nack. Pull redeliveries ignore no retry policy on Pub/Sub, but the
	// emulators redeliver at once; holding the message also holds its
	// flow-control slot, so during a database outage the ingester makes at
	// most MaxOutstandingMessages attempts per delay.
	DefaultNackDelay = time.Second
	// DefaultLeaseExtension is how long each lease renewal lasts (Pub/Sub's
	// least, 10 s), and so how soon the messages an ingester held come back
	// when it dies without answering them: with the library's default (up
	// to 10 min, from the 99th percentile of processing time) a kill -9
	// strands them that long. Subscriptions with exactly-once delivery
	// lease for at least 60 s whatever this says (the library's floor).
	DefaultLeaseExtension = 10 * time.Second
	// DefaultStreams is the number of StreamingPull streams; one carries
	// thousands of messages a second.
	DefaultStreams = 1
)

// Config configures Run. Zero fields take their defaults.
type Config struct {
	// Subscription is the subscription's full name,
	// projects/P/subscriptions/S. Required.
	Subscription string
	// Topic is the full name of the subscription's topic, projects/P/topics/T:
	// it is part of every message's deduplication key, as on the push
	// path. Required.
	Topic                  string
	MaxOutstandingMessages int           // default DefaultMaxOutstandingMessages
	MaxOutstandingBytes    int           // default DefaultMaxOutstandingBytes
	Streams                int           // default DefaultStreams
	StoreTimeout           time.Duration // default DefaultStoreTimeout
	DrainTimeout           time.Duration // default DefaultDrainTimeout
	NackDelay              time.Duration // default DefaultNackDelay
	LeaseExtension         time.Duration // default DefaultLeaseExtension; 10 s to 600 s
	// Log receives what happens; message content never reaches it.
	Log *slog.Logger
}

func (c *Config) fill() error {
	if !strings.HasPrefix(c.Subscription, "projects/") || !strings.Contains(c.Subscription, "/subscriptions/") {
		return fmt.Errorf("subscription %q: want projects/P/subscriptions/S", c.Subscription)
	}
	if !strings.HasPrefix(c.Topic, "projects/") || !strings.Contains(c.Topic, "/topics/") {
		return fmt.Errorf("topic %q: want projects/P/topics/T", c.Topic)
	}
	def := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	defDur := func(v *time.Duration, d time.Duration) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&c.MaxOutstandingMessages, DefaultMaxOutstandingMessages)
	def(&c.MaxOutstandingBytes, DefaultMaxOutstandingBytes)
	def(&c.Streams, DefaultStreams)
	defDur(&c.StoreTimeout, DefaultStoreTimeout)
	defDur(&c.DrainTimeout, DefaultDrainTimeout)
	defDur(&c.NackDelay, DefaultNackDelay)
	defDur(&c.LeaseExtension, DefaultLeaseExtension)
	c.LeaseExtension = min(max(c.LeaseExtension, 10*time.Second), 600*time.Second)
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
	return nil
}

// StoreFunc stores one message of topic: nil when it is stored or kept as a
// dead letter, an error when it failed transiently.
type StoreFunc func(ctx context.Context, topic string, m *pubsub.Message) error

// Stats counts what Run did.
type Stats struct {
	Acked, Nacked, AckFailed int64
}

// Run receives cfg.Subscription until ctx ends, then drains. It returns nil
// after a drain, or the error that stopped the subscriber (a subscription
// that does not exist at start, permission denied). A subscription that
// disappears once messages were received (an emulator restarted and not yet
// set up again) is waited for: Run retries, logging, until ctx ends.
func Run(ctx context.Context, client *pubsub.Client, cfg Config, store StoreFunc) (Stats, error) {
	if err := cfg.fill(); err != nil {
		return Stats{}, err
	}
	var acked, nacked, ackFailed atomic.Int64
	sub := client.Subscriber(cfg.Subscription)
	sub.ReceiveSettings.MaxOutstandingMessages = cfg.MaxOutstandingMessages
	sub.ReceiveSettings.MaxOutstandingBytes = cfg.MaxOutstandingBytes
	sub.ReceiveSettings.NumGoroutines = cfg.Streams
	sub.ReceiveSettings.MaxDurationPerAckExtension = cfg.LeaseExtension
	// The library's graceful shutdown sends the acks of the messages that
	// finish during the drain; its timed one stops the streams first and
	// drops them (v2.9.0), so the drain is bounded here instead.
	sub.ReceiveSettings.ShutdownOptions = &pubsub.ShutdownOptions{Behavior: pubsub.ShutdownBehaviorWaitForProcessing, Timeout: -1}
	receive := func(rctx context.Context, m *pubsub.Message) {
		// The store call outlives the receive context, which ends at
		// shutdown: a message taken is stored and answered within
		// StoreTimeout, so the drain acknowledges instead of abandoning.
		sctx, cancel := context.WithTimeout(context.WithoutCancel(rctx), cfg.StoreTimeout)
		defer cancel()
		if err := store(sctx, cfg.Topic, m); err != nil {
			nacked.Add(1)
			pause(rctx, cfg.NackDelay)
			m.Nack()
			return
		}
		res := m.AckWithResult()
		// Without exactly-once delivery the result is ready at once; with
		// it, Pub/Sub confirms the ack or says it failed.
		if _, err := res.Get(sctx); err != nil {
			ackFailed.Add(1)
			cfg.Log.Warn("ack not confirmed; the message will be delivered again and stored nowhere twice", "message_id", m.ID, "error", err.Error())
			return
		}
		acked.Add(1)
	}
	backoff := time.Second
	for {
		start := time.Now()
		err := receiveBounded(ctx, sub, receive, cfg.DrainTimeout)
		stats := Stats{Acked: acked.Load(), Nacked: nacked.Load(), AckFailed: ackFailed.Load()}
		if ctx.Err() != nil {
			if errors.Is(err, errDrainTimeout) {
				return stats, err
			}
			return stats, nil
		}
		if status.Code(err) != codes.NotFound || acked.Load()+nacked.Load()+ackFailed.Load() == 0 {
			return stats, fmt.Errorf("receiving %s: %w", cfg.Subscription, err)
		}
		if time.Since(start) > time.Minute {
			backoff = time.Second
		}
		cfg.Log.Warn("subscription not found; retrying", "subscription", cfg.Subscription, "retry_in", backoff.String())
		pause(ctx, backoff)
		backoff = min(2*backoff, 30*time.Second)
	}
}

// errDrainTimeout is a drain that outlasted its bound.
var errDrainTimeout = errors.New("drain timed out; the messages still in flight will be delivered again")

// receiveBounded is sub.Receive, returning at most drain after ctx ends.
func receiveBounded(ctx context.Context, sub *pubsub.Subscriber, f func(context.Context, *pubsub.Message), drain time.Duration) error {
	done := make(chan error, 1)
	go func() { done <- sub.Receive(ctx, f) }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
	}
	t := time.NewTimer(drain)
	defer t.Stop()
	select {
	case err := <-done:
		return err
	case <-t.C:
		return errDrainTimeout
	}
}

// pause waits d or until ctx ends.
func pause(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}
