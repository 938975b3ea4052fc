// Command pscpull is the pull ingester, the bulk ingest path that
// cloudbuild.yaml deploys as a Cloud Run service: it stores the messages of
// a Pub/Sub subscription as IngestPubSub does, pulling them with the client
// library's streaming pull (no HTTP request per message). It is a thin
// wiring of cmd/internal/pullingest to the function's own decoding and
// store, and a command of its own so that the deployed binary links neither
// the local Pub/Sub bridge's pstest nor, through it, package testing
// (links_test.go pins that).
//
//	go run ./cmd/pscpull -subscription S [-topic T] [flags]
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"cloud.google.com/go/pubsub/v2"
	"cloud.google.com/go/pubsub/v2/apiv1/pubsubpb"

	function "example.com/pscmessages"
	"example.com/pscmessages/cmd/internal/pubsubclient"
	"example.com/pscmessages/cmd/internal/pullingest"
)

func main() {
	// The first Ctrl-C or SIGTERM ends the context, and the ingester drains;
	// stop then restores the default action, so a second one ends the
	// process at once (what it held, Pub/Sub delivers again).
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	go func() {
		<-ctx.Done()
		stop()
	}()
	if err := run(ctx, os.Args[1:], os.Stderr); err != nil {
		fmt.Fprintf(os.Stderr, "pscpull: %v\n", err)
		os.Exit(1)
	}
}

// run parses args (flags only; usage and flag errors go to stderr) and
// ingests until ctx ends and the drain is over.
func run(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("pscpull", flag.ContinueOnError)
	fs.SetOutput(stderr)
	project := fs.String("project", pubsubclient.Project(), "project `id` of the subscription; PUBSUB_PROJECT_ID or GOOGLE_CLOUD_PROJECT sets the default")
	subID := fs.String("subscription", os.Getenv("PUBSUB_SUBSCRIPTION"), "subscription `id` or projects/P/subscriptions/S (required; PUBSUB_SUBSCRIPTION sets the default)")
	topic := fs.String("topic", "", "the subscription's topic, `id` or projects/P/topics/T; when empty it is read from the subscription (needs pubsub.subscriptions.get)")
	maxMsgs := fs.Int("max-outstanding-messages", pullingest.DefaultMaxOutstandingMessages, "messages received and not yet acknowledged, at most")
	maxBytes := fs.Int("max-outstanding-bytes", pullingest.DefaultMaxOutstandingBytes, "bytes of message data received and not yet acknowledged, at most")
	streams := fs.Int("streams", pullingest.DefaultStreams, "StreamingPull streams")
	drain := fs.Duration("drain-timeout", pullingest.DefaultDrainTimeout, "how long SIGTERM waits for messages in flight to be stored and acknowledged")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: go run ./cmd/pscpull -subscription S [flags]   (or a binary: go install ./cmd/pscpull)\n\n"+
			"Stores the messages of a Pub/Sub subscription as IngestPubSub does, pulling them in bulk\n"+
			"(the emulator's with PUBSUB_EMULATOR_HOST, otherwise Pub/Sub with Google default credentials),\n"+
			"into the database of DATABASE_URL or DB_*. Stops on SIGTERM or Ctrl-C after a drain.\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q: pscpull takes flags only (go run ./cmd/pscpull -subscription S)", fs.Args())
	}
	if *subID == "" {
		return errors.New("-subscription is required")
	}
	// The function's settings, read once and passed down.
	cfg, err := function.ConfigFromEnv(os.Getenv)
	if err != nil {
		return err
	}
	fn := function.New(cfg, os.Stdout)
	if err := fn.Check(); err != nil {
		return err
	}
	log := cfg.Logger(os.Stderr).With("component", "pull")
	if addr := os.Getenv("PUBSUB_EMULATOR_HOST"); addr != "" {
		if err := pubsubclient.CheckEmulator(ctx, addr); err != nil {
			return err
		}
	}
	client, err := pubsub.NewClientWithConfig(ctx, *project, pubsubclient.Config())
	if err != nil {
		return fmt.Errorf("pubsub client: %w", err)
	}
	defer client.Close()
	subName := fullName(*project, "subscriptions", *subID)
	topicName := ""
	if *topic != "" {
		topicName = fullName(*project, "topics", *topic)
	} else {
		gctx, cancel := context.WithTimeout(ctx, pubsubclient.SetupTimeout)
		s, err := client.SubscriptionAdminClient.GetSubscription(gctx, &pubsubpb.GetSubscriptionRequest{Subscription: subName})
		cancel()
		if err != nil {
			return fmt.Errorf("reading the topic of %s (or pass -topic): %w", subName, err)
		}
		topicName = s.GetTopic()
		if topicName == "_deleted-topic_" {
			return fmt.Errorf("%s: its topic was deleted", subName)
		}
	}
	defer fn.Close()
	if port := os.Getenv("PORT"); port != "" {
		stop, err := serveAlive(net.JoinHostPort(os.Getenv("HOST"), port))
		if err != nil {
			return err
		}
		defer stop()
	}
	log.Info("pulling", "subscription", subName, "topic", topicName, "max_outstanding_messages", *maxMsgs, "max_outstanding_bytes", *maxBytes)
	start := time.Now()
	stats, err := pullingest.Run(ctx, client, pullingest.Config{
		Subscription: subName, Topic: topicName,
		MaxOutstandingMessages: *maxMsgs, MaxOutstandingBytes: *maxBytes, Streams: *streams,
		DrainTimeout: *drain, Log: log,
	}, storeWith(fn))
	log.Info("stopped pulling", "acked", stats.Acked, "nacked", stats.Nacked, "ack_failed", stats.AckFailed, "elapsed", time.Since(start).Round(time.Millisecond).String())
	return err
}

// serveAlive answers every request at addr with 200: deployed as a Cloud Run
// service (CPU always allocated), the container must listen on PORT for its
// startup probe, though nothing but the probe calls it.
func serveAlive(addr string) (stop func(), err error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("PORT: %w", err)
	}
	srv := &http.Server{
		Handler:           http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "pulling") }),
		ReadHeaderTimeout: 5 * time.Second,
	}
	go srv.Serve(ln)
	return func() { srv.Close() }, nil
}

// storeWith stores each pulled message through IngestPubSub's own decoding
// and store, on fn.
func storeWith(fn *function.Service) pullingest.StoreFunc {
	return func(ctx context.Context, topic string, m *pubsub.Message) error {
		return fn.StorePubSubMessage(ctx, topic, function.PubsubMessage{
			Data: m.Data, Attributes: m.Attributes, MessageID: m.ID, PublishTime: m.PublishTime, OrderingKey: m.OrderingKey,
		})
	}
}

// fullName is projects/P/KIND/ID, or id when it is a full name already.
func fullName(project, kind, id string) string {
	if strings.HasPrefix(id, "projects/") {
		return id
	}
	return "projects/" + project + "/" + kind + "/" + id
}
