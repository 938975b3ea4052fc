package main

// The Pub/Sub side of the local runner. Deployed, Eventarc pulls the topic's
// messages and POSTs each to IngestPubSub as a binary-mode CloudEvent; a 2xx
// answer acks it, anything else has it delivered again later. Locally,
// `go run ./cmd/pscpubsub` does the same against an emulator, so the function
// sees on one machine exactly the requests it sees deployed. The Pub/Sub
// client library lives here and in tests only: the function's package never
// imports it.
//
// What the runner sends, as Eventarc does: POST /IngestPubSub (or / with
// FUNCTION_TARGET=IngestPubSub) with ce-id set to the message id, ce-source
// //pubsub.googleapis.com/projects/P/topics/T, ce-type
// google.cloud.pubsub.topic.v1.messagePublished, ce-specversion 1.0, ce-time
// the publish time, Content-Type application/json and the body
// {"message": {"data", "attributes", "messageId", "publishTime"},
// "subscription": "projects/P/subscriptions/S"}, with message_id and
// publish_time in the body as well, like Eventarc.
//
// Ack only what is stored: a 2xx answer acks the message; any other status,
// a connection error or no answer within deliveryTimeout nacks it, after a
// wait of 1 s or what Retry-After asks, up to 10 s. The emulators redeliver a
// nacked message at once, so the wait keeps a database outage from becoming
// a busy loop: at most -pubsub-concurrency attempts a second.
//
// On Ctrl-C or SIGTERM the runner stops pulling, lets the deliveries in flight
// finish and acks or nacks each by its answer; only then do the HTTP server
// and the pool stop. Messages the client had prefetched but not started are
// nacked; pstest can strand a few in a closed stream, and those come back
// when their lease (leaseExtension) runs out. Once no delivery is in flight,
// the client gets ackFlushTimeout to send the last acks and nacks: an
// emulator that is gone never takes them, and its messages come back later.
//
// Emulators number their message ids afresh when they start (pstest m0, m1,
// ...; the official emulator 1, 2, ...), while the local database is kept.
// So that a new message 1 is never taken for an old message 1, the runner
// prefixes every emulator's ids with an epoch (ce-id:
// 20261130t115920_336z-5): the time it created its subscription, kept as the
// subscription's pscmessages-epoch label, so a runner restarted against the
// same emulator uses the same prefix and still recognises redeliveries, and
// a restarted emulator, which has lost the subscription, gets a new one (see
// idPrefix in emulator.go).
//
// An emulator that goes away is reported while it is gone; when it answers
// again the runner recreates its topic and subscription (a restarted emulator
// has lost them), rewinding the subscription so that nothing published
// between the two is lost (see ensureSubscription). PUBSUB_EMULATOR_HOST where nothing listens stops
// the runner and the publish command within pubsubclient.DialTimeout, naming the
// variable.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"cloud.google.com/go/pubsub/v2"
	"cloud.google.com/go/pubsub/v2/apiv1/pubsubpb"
	"cloud.google.com/go/pubsub/v2/pstest"
	"google.golang.org/api/option"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	function "example.com/pscmessages"
	"example.com/pscmessages/cmd/internal/pubsubclient"
)

// defaultPubSubTopic is the topic of the runner and of the publish command
// without flags, so that the one delivers what the other publishes.
const defaultPubSubTopic = "messages"

const (
	// subscriptionAckDeadline is the subscription's, used by plain Pull;
	// streaming pull leases messages for leaseExtension at a time instead.
	subscriptionAckDeadline = 60 * time.Second
	// leaseExtension is the streaming lease, renewed while a message waits
	// or is delivered. It is also how soon the messages a stopped runner
	// had prefetched come back (the library's default is 60 s): pstest
	// ignores the client's flow control and pushes a backlog into the
	// streams, where a shutdown strands some until the lease runs out.
	leaseExtension = 10 * time.Second
	// deliveryTimeout bounds one POST. It exceeds the function's own worst
	// case (a cold pool open waits up to 30 s) so a slow success is not
	// turned into a redelivery.
	deliveryTimeout = 45 * time.Second
	// nackDelay is how long a failed message is held before its nack.
	// Emulators (pstest at least) redeliver a nacked message at once and
	// ignore the subscription's retry policy, so without it a database
	// outage would spin at full speed. Holding the message also holds its
	// concurrency slot, which is the point: during an outage the runner
	// makes at most concurrency attempts per nackDelay.
	nackDelay    = time.Second
	maxNackDelay = 10 * time.Second
	// maxPullStreams caps the StreamingPull streams; see pubsubConfig.streams.
	maxPullStreams = 32
)

// pubsubTopic reads PUBSUB_TOPIC, falling back to defaultPubSubTopic.
func pubsubTopic() string { return envOr("PUBSUB_TOPIC", defaultPubSubTopic) }

// pubsubFlags are serve's Pub/Sub side, a localrun.Extension: its flags, and
// the delivery it starts once the functions are served.
type pubsubFlags struct {
	fs          *flag.FlagSet
	enabled     *bool
	concurrency *int
}

// Summary is serve's line in `help`.
func (f *pubsubFlags) Summary() string {
	return "serve Messages and IngestPubSub on HOST:PORT and deliver a Pub/Sub topic to IngestPubSub (the default command)"
}

// Usage is serve's usage line past the common flags.
func (f *pubsubFlags) Usage() string { return "[-pubsub=false] [-pubsub-concurrency N]" }

// AddFlags registers -pubsub and -pubsub-concurrency on fs.
func (f *pubsubFlags) AddFlags(fs *flag.FlagSet) {
	f.fs = fs
	f.enabled = fs.Bool("pubsub", true, "deliver a Pub/Sub topic's messages to IngestPubSub as Eventarc does, from the emulator\n"+
		"at PUBSUB_EMULATOR_HOST or, when it is unset, from one started in-process (pstest)")
	f.concurrency = fs.Int("pubsub-concurrency", 8, "Pub/Sub messages delivered at once")
}

// Start starts the Pub/Sub side unless -pubsub=false, once the functions
// are served at base. The returned func stops it; it is a no-op when
// nothing was started.
func (f *pubsubFlags) Start(ctx context.Context, base string) (stop func(), err error) {
	explicit := false
	f.fs.Visit(func(fl *flag.Flag) { explicit = explicit || fl.Name == "pubsub" })
	emulator := os.Getenv("PUBSUB_EMULATOR_HOST")
	if !*f.enabled {
		return func() {}, nil
	}
	target := os.Getenv("FUNCTION_TARGET")
	endpoint, err := ingestEndpoint(base, target)
	if err != nil {
		if !explicit {
			fmt.Printf("not pulling Pub/Sub: %v\n", err)
			return func() {}, nil
		}
		return nil, err
	}
	if *f.concurrency < 1 {
		return nil, errors.New("-pubsub-concurrency must be at least 1")
	}
	return startPubSub(ctx, pubsubConfig{
		Project:     pubsubclient.Project(),
		Topic:       pubsubTopic(),
		Endpoint:    endpoint,
		Concurrency: *f.concurrency,
		Emulator:    emulator,
		Out:         os.Stdout,
		Log:         function.NewLogger(os.Stderr).With("component", "pubsub"),
	})
}

// ingestEndpoint is where the framework serves IngestPubSub: its own path
// when it serves every function, "/" when FUNCTION_TARGET picks it alone.
func ingestEndpoint(base, target string) (string, error) {
	switch target {
	case "":
		return base + "/IngestPubSub", nil
	case "IngestPubSub":
		return base + "/", nil
	}
	return "", fmt.Errorf("FUNCTION_TARGET=%s does not serve IngestPubSub", target)
}

// pubsubConfig is what startPubSub needs; tests fill it directly.
type pubsubConfig struct {
	Project, Topic string
	// Subscription is the subscription id; "" means PUBSUB_SUBSCRIPTION or
	// Topic+"-ingest".
	Subscription string
	// Endpoint is the URL IngestPubSub answers at.
	Endpoint    string
	Concurrency int
	// Emulator is host:port of a running emulator; "" starts pstest in
	// this process.
	Emulator string
	Out      io.Writer // where the addresses are printed
	Log      *slog.Logger
}

// streams is the number of StreamingPull streams. One stream is plenty for
// the real service and the gcloud emulator, but pstest hands each stream at
// most one message per 10 ms tick: a stream per delivery
// slot, up to maxPullStreams, keeps the fake from being the bottleneck.
// Concurrency itself is bounded by MaxOutstandingMessages, across streams.
func (c pubsubConfig) streams() int { return min(c.Concurrency, maxPullStreams) }

// startPubSub creates the topic and subscription if missing, then delivers
// until stop is called. stop stops pulling, lets in-flight deliveries finish
// (acking or nacking each by its answer), then releases the client and the
// in-process emulator.
func startPubSub(ctx context.Context, cfg pubsubConfig) (stop func(), err error) {
	if cfg.Subscription == "" {
		cfg.Subscription = envOr("PUBSUB_SUBSCRIPTION", cfg.Topic+"-ingest")
	}
	var fake *pstest.Server
	addr := cfg.Emulator
	if addr == "" {
		fake = pstest.NewServerWithAddress("127.0.0.1:0")
		defer func() {
			if err != nil {
				fake.Close()
			}
		}()
		addr = fake.Addr
	} else if err := pubsubclient.CheckEmulator(ctx, addr); err != nil {
		return nil, err
	}
	rewind := fake == nil && officialEmulator(ctx, addr)
	client, err := pubsub.NewClientWithConfig(ctx, cfg.Project, pubsubclient.Config(), emulatorOptions(addr)...)
	if err != nil {
		return nil, fmt.Errorf("pubsub client: %w", err)
	}
	topic := "projects/" + cfg.Project + "/topics/" + cfg.Topic
	subName := "projects/" + cfg.Project + "/subscriptions/" + cfg.Subscription
	sctx, cancelSetup := context.WithTimeout(ctx, pubsubclient.SetupTimeout)
	epoch, _, err := ensureSubscription(sctx, client, topic, subName, rewind, nil)
	cancelSetup()
	if err != nil {
		client.Close()
		if cfg.Emulator != "" && sctx.Err() != nil {
			err = fmt.Errorf("PUBSUB_EMULATOR_HOST=%s accepts connections but did not create the topic and subscription within %v: %w", addr, pubsubclient.SetupTimeout, err)
		}
		return nil, err
	}
	if epoch == "" {
		cfg.Log.Warn("the subscription was not created by the runner, so message ids are used as the emulator numbers them; "+
			"after an emulator restart, new messages can be taken for old ones. Delete the subscription to let the runner create it",
			"subscription", subName)
	}

	sub := client.Subscriber(subName)
	sub.ReceiveSettings.MaxOutstandingMessages = cfg.Concurrency
	sub.ReceiveSettings.NumGoroutines = cfg.streams()
	sub.ReceiveSettings.MaxDurationPerAckExtension = leaseExtension
	b := &bridge{
		subscription: subName,
		source:       "//pubsub.googleapis.com/" + topic,
		endpoint:     cfg.Endpoint,
		idPrefix:     idPrefix(epoch),
		client:       newDeliveryClient(cfg.Concurrency),
		timeout:      deliveryTimeout,
		nackDelay:    nackDelay,
		log:          cfg.Log,
	}

	if fake != nil {
		fmt.Fprintf(cfg.Out, "started an in-process Pub/Sub emulator (pstest); for publishers in another terminal:\n\n"+
			"    export PUBSUB_EMULATOR_HOST=%s\n\n", fake.Addr)
	} else {
		fmt.Fprintf(cfg.Out, "using the Pub/Sub emulator at %s\n", cfg.Emulator)
	}
	fmt.Fprintf(cfg.Out, "pubsub: delivering %s (topic %s) to %s, %d at a time\n", subName, topic, cfg.Endpoint, cfg.Concurrency)

	// Not ctx: shutdown is stop's to order, after the caller's ctx is done.
	rctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	// resync recreates what a restarted emulator has lost and takes on the
	// subscription's epoch. The watchdog calls it as soon as the emulator
	// is back: the client's own reconnect backoff would take tens of
	// seconds to find the subscription gone.
	var syncMu sync.Mutex
	// rewindFrom is when a topic that resync recreated began to keep what
	// is published to it, until a subscription rewound to it delivers
	// that; zero when nothing waits. Guarded by syncMu.
	var rewindFrom time.Time
	resync := func() bool {
		syncMu.Lock()
		defer syncMu.Unlock()
		sctx, cancel := context.WithTimeout(rctx, pubsubclient.SetupTimeout)
		defer cancel()
		// A subscription created here delivers at once, and its rewind
		// delivers the same messages again: every one of them must carry
		// the epoch of the subscription it came from, or it is stored
		// twice under two ids. Deliveries wait for it.
		b.mu.Lock()
		epoch, created, err := ensureSubscription(sctx, client, topic, subName, rewind, &rewindFrom)
		if err == nil {
			b.idPrefix = idPrefix(epoch)
		}
		b.mu.Unlock()
		if err != nil {
			cfg.Log.Error("recreating the topic and subscription failed; retrying", "error", err)
			return false
		}
		if created {
			cfg.Log.Warn("the emulator had lost the subscription (restarted?): recreated it; new message ids are qualified by its new epoch",
				"subscription", subName, "pubsub_emulator_host", addr, "epoch", epoch)
		}
		return true
	}
	if fake == nil {
		lost := func(ctx context.Context) bool {
			_, err := client.SubscriptionAdminClient.GetSubscription(ctx, &pubsubpb.GetSubscriptionRequest{Subscription: subName})
			return status.Code(err) == codes.NotFound
		}
		go watchEmulator(rctx, addr, cfg.Log.With("pubsub_emulator_host", addr), lost, resync)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			err := sub.Receive(rctx, b.handle)
			if rctx.Err() != nil {
				return
			}
			cfg.Log.Error("pulling stopped; retrying in 2s", "error", err)
			select {
			case <-rctx.Done():
				return
			case <-time.After(2 * time.Second):
			}
			resync()
		}
	}()
	var once sync.Once
	return func() {
		once.Do(func() {
			cancel()
			// Receive returns once every callback has acked or nacked and
			// the library has sent those acks and nacks.
			if !awaitReceive(done, b.deliveriesInFlight, ackFlushTimeout) {
				cfg.Log.Warn("Pub/Sub did not take the last acknowledgements in time (is the emulator gone?); "+
					"those messages will be delivered again, and the function recognises the ones it stored",
					"wait", ackFlushTimeout.String())
			}
			closeWithin(client.Close, ackFlushTimeout)
			if fake != nil {
				fake.Close()
			}
		})
	}, nil
}

// ackFlushTimeout is how long a stopping runner waits, once no delivery is in
// flight, for the client to send the last acks and nacks. A live emulator
// takes them in milliseconds; one that is gone never does, and the client
// retries them (and reopens its streams) for over a minute, longer than
// the runner may take to stop.
const ackFlushTimeout = 5 * time.Second

// awaitReceive waits for done (Receive returned). While deliveries are in
// flight it waits for them, each bounded by deliveryTimeout; once none is, it
// waits at most grace more. It reports whether Receive returned.
func awaitReceive(done <-chan struct{}, inFlight func() int64, grace time.Duration) bool {
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	var idleSince time.Time
	for {
		select {
		case <-done:
			return true
		case <-tick.C:
		}
		if inFlight() > 0 {
			idleSince = time.Time{}
			continue
		}
		if idleSince.IsZero() {
			idleSince = time.Now()
		}
		if time.Since(idleSince) >= grace {
			return false
		}
	}
}

// closeWithin runs close, waiting for it at most d: closing a client whose
// server is gone must not hold the shutdown either.
func closeWithin(closeClient func() error, d time.Duration) {
	closed := make(chan struct{})
	go func() {
		closeClient()
		close(closed)
	}()
	select {
	case <-closed:
	case <-time.After(d):
	}
}

// emulatorOptions connect a client to an emulator at addr, as the library
// itself does for PUBSUB_EMULATOR_HOST, without touching the environment.
func emulatorOptions(addr string) []option.ClientOption {
	return []option.ClientOption{
		option.WithEndpoint(addr),
		option.WithoutAuthentication(),
		option.WithGRPCDialOption(grpc.WithTransportCredentials(insecure.NewCredentials())),
	}
}

// ensureSubscription creates topic and subscription unless they exist, so
// starting the runner again, or against a long-running emulator, just works.
// It returns the subscription's epoch label (see idPrefix), "" when someone
// else created it without one, and whether it created the subscription.
//
// A topic without a subscription accepts a publish and discards it, and a
// restarted emulator has both to recreate: a publisher that finds the topic
// back before its subscription (a cold emulator took up to seconds between
// the two here) would lose its message. So a topic created here keeps what
// is published to it (topicRetention), and its new subscription is rewound
// (Seek) to before the topic existed, which delivers what was published in
// between; the official emulator honours both. The subscription is retried
// until ctx ends if the emulator refuses it.
//
// When it still cannot be made, what happens to a topic created here
// depends on whether another attempt follows. With pending nil (the
// runner's start, which then stops) the topic is deleted again: a publisher
// gets NOT_FOUND, and retries, rather than an id for a message nobody would
// receive. With pending non-nil (resync, which tries again) the topic stays
// and keeps what is published meanwhile, *pending holds since when, and the
// attempt that makes the subscription rewinds it there and clears
// *pending: deleting the topic would lose what it had already accepted.
//
// rewind is only for the official emulator: pstest's Seek to a time breaks
// its delivery (a nil message), and pstest does not restart on its own.
func ensureSubscription(ctx context.Context, c *pubsub.Client, topic, sub string, rewind bool, pending *time.Time) (epoch string, created bool, err error) {
	before := time.Now().Add(-time.Minute) // nothing was published to a topic before it existed
	_, err = c.TopicAdminClient.CreateTopic(ctx, &pubsubpb.Topic{Name: topic, MessageRetentionDuration: durationpb.New(topicRetention)})
	createdTopic := err == nil
	if err != nil && status.Code(err) != codes.AlreadyExists {
		return "", false, fmt.Errorf("creating topic %s: %w", topic, err)
	}
	if pending != nil && pending.IsZero() && createdTopic {
		*pending = before
	}
	var from time.Time // where a new subscription is rewound to; zero: nowhere
	switch {
	case pending != nil:
		from = *pending
	case createdTopic:
		from = before
	}
	epoch, created, err = createSubscription(ctx, c, topic, sub)
	if err != nil {
		if createdTopic && pending == nil {
			dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), pubsubclient.DialTimeout)
			defer cancel()
			if derr := c.TopicAdminClient.DeleteTopic(dctx, &pubsubpb.DeleteTopicRequest{Topic: topic}); derr != nil {
				err = fmt.Errorf("%w; and deleting the topic again, so that nothing is published to it meanwhile, failed: %v", err, derr)
			}
		}
		return epoch, created, err
	}
	// Only a subscription made here is rewound: one that already existed
	// may have messages in flight, which a rewind would disturb.
	if rewind && !from.IsZero() && created {
		_, err = c.SubscriptionAdminClient.Seek(ctx, &pubsubpb.SeekRequest{Subscription: sub, Target: &pubsubpb.SeekRequest_Time{Time: timestamppb.New(from)}})
		if err != nil {
			return epoch, created, fmt.Errorf("rewinding subscription %s to the creation of its topic: %w", sub, err)
		}
	}
	if pending != nil {
		*pending = time.Time{}
	}
	return epoch, created, nil
}

// topicRetention is how long a topic the runner creates keeps its messages
// whatever their acknowledgement: 10 minutes, Pub/Sub's least, is enough for
// a subscription created just after the topic to rewind to what it missed.
const topicRetention = 10 * time.Minute

// createSubscription is ensureSubscription's second half, retried every
// 100 ms until ctx ends (an emulator that has just come back may refuse it
// for a moment).
func createSubscription(ctx context.Context, c *pubsub.Client, topic, sub string) (epoch string, created bool, err error) {
	for {
		epoch, created, err = tryCreateSubscription(ctx, c, topic, sub)
		if err == nil || ctx.Err() != nil || status.Code(err) == codes.InvalidArgument {
			return epoch, created, err
		}
		select {
		case <-ctx.Done():
			return epoch, created, err
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func tryCreateSubscription(ctx context.Context, c *pubsub.Client, topic, sub string) (epoch string, created bool, err error) {
	epoch = newEpoch()
	_, err = c.SubscriptionAdminClient.CreateSubscription(ctx, &pubsubpb.Subscription{
		Name:               sub,
		Topic:              topic,
		AckDeadlineSeconds: int32(subscriptionAckDeadline / time.Second),
		// Honoured by the real service; emulators may ignore it (pstest
		// does), hence bridge.nackDelay as well.
		RetryPolicy: &pubsubpb.RetryPolicy{
			MinimumBackoff: durationpb.New(nackDelay),
			MaximumBackoff: durationpb.New(time.Minute),
		},
		Labels: map[string]string{epochLabel: epoch},
	})
	if status.Code(err) == codes.AlreadyExists {
		got, err := c.SubscriptionAdminClient.GetSubscription(ctx, &pubsubpb.GetSubscriptionRequest{Subscription: sub})
		if err != nil {
			return "", false, fmt.Errorf("reading subscription %s: %w", sub, err)
		}
		if got.Topic != topic {
			return "", false, fmt.Errorf("subscription %s exists but is attached to %s, not %s; set PUBSUB_SUBSCRIPTION", sub, got.Topic, topic)
		}
		return got.Labels[epochLabel], false, nil
	}
	if err != nil {
		return "", false, fmt.Errorf("creating subscription %s: %w", sub, err)
	}
	return epoch, true, nil
}

// newDeliveryClient keeps a warm connection per delivery slot: with
// net/http's default of two idle connections per host, 32 concurrent
// deliveries would open and close connections constantly.
func newDeliveryClient(concurrency int) *http.Client {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.Proxy = nil // loopback only
	t.MaxIdleConnsPerHost = concurrency
	return &http.Client{Transport: t}
}

// bridge delivers Pub/Sub messages to IngestPubSub as Eventarc does.
type bridge struct {
	subscription string // projects/P/subscriptions/S
	source       string // ce-source: //pubsub.googleapis.com/projects/P/topics/T
	endpoint     string
	mu           sync.Mutex // held by a resync, so deliveries wait for their subscription's epoch
	idPrefix     string     // qualifies an emulator's message ids; see idPrefix()
	client       *http.Client
	timeout      time.Duration
	nackDelay    time.Duration
	log          *slog.Logger
	inFlight     atomic.Int64 // deliveries being made or waiting to nack
}

// deliveriesInFlight is how many callbacks have not returned.
func (b *bridge) deliveriesInFlight() int64 { return b.inFlight.Load() }

// handle is the Receive callback: ack only what the function answered 2xx
// for, that is what it stored (or kept as a dead letter); nack the rest after
// a pause. ctx ends at shutdown, which cuts the pause short but never the
// delivery itself.
func (b *bridge) handle(ctx context.Context, m *pubsub.Message) {
	b.inFlight.Add(1)
	defer b.inFlight.Add(-1)
	retryAfter, err := b.deliver(ctx, m)
	if err == nil {
		m.Ack()
		return
	}
	b.log.Warn("delivery failed; will be redelivered", "message_id", m.ID, "error", err.Error())
	delay := b.nackDelay
	if retryAfter > 0 {
		delay = min(retryAfter, maxNackDelay)
	}
	t := time.NewTimer(delay)
	select {
	case <-t.C:
	case <-ctx.Done():
		t.Stop()
	}
	m.Nack()
}

func (b *bridge) prefix() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.idPrefix
}

// pushMessage is the Pub/Sub message in Eventarc's event data. Eventarc
// sends the id and publish time twice, in camelCase and snake_case; so do we.
type pushMessage struct {
	Data             []byte            `json:"data,omitempty"`
	Attributes       map[string]string `json:"attributes,omitempty"`
	MessageID        string            `json:"messageId"`
	MessageIDSnake   string            `json:"message_id"`
	PublishTime      string            `json:"publishTime"`
	PublishTimeSnake string            `json:"publish_time"`
	OrderingKey      string            `json:"orderingKey,omitempty"`
}

type pushEnvelope struct {
	Message      pushMessage `json:"message"`
	Subscription string      `json:"subscription"`
}

// deliveryError is a delivery the function did not accept.
type deliveryError struct {
	status int
	body   string
}

func (e *deliveryError) Error() string {
	return fmt.Sprintf("IngestPubSub answered %d: %s", e.status, e.body)
}

// deliver POSTs m as a binary-mode messagePublished CloudEvent. It returns nil
// on a 2xx answer, and otherwise the error with the Retry-After the function
// asked for, if any. The request outlives ctx (bounded by b.timeout): an
// in-flight delivery finishes even at shutdown, so its answer decides.
func (b *bridge) deliver(ctx context.Context, m *pubsub.Message) (retryAfter time.Duration, err error) {
	id := b.prefix() + m.ID
	published := m.PublishTime.UTC().Format(time.RFC3339Nano)
	body, err := json.Marshal(pushEnvelope{
		Message: pushMessage{
			Data: m.Data, Attributes: m.Attributes,
			MessageID: id, MessageIDSnake: id,
			PublishTime: published, PublishTimeSnake: published,
			OrderingKey: m.OrderingKey,
		},
		Subscription: b.subscription,
	})
	if err != nil {
		return 0, err
	}
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), b.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(rctx, http.MethodPost, b.endpoint, bytes.NewReader(body))
	if err != nil {
		return 0, err
	}
	h := req.Header
	h.Set("Content-Type", "application/json")
	h.Set("ce-id", id)
	h.Set("ce-source", b.source)
	h.Set("ce-type", function.MessagePublishedType)
	h.Set("ce-specversion", "1.0")
	h.Set("ce-time", published)
	resp, err := b.client.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	snippet, _ := io.ReadAll(io.LimitReader(resp.Body, 300))
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10)) // so the connection is reused
	if resp.StatusCode/100 == 2 {
		return 0, nil
	}
	if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && s > 0 {
		retryAfter = time.Duration(s) * time.Second
	}
	return retryAfter, &deliveryError{status: resp.StatusCode, body: strings.Join(strings.Fields(string(snippet)), " ")}
}
