package main

// End-to-end tests of the Pub/Sub path with the real client library against
// pstest and a real PostgreSQL.
//
// The function under test is the real serve path, `go run ./cmd/pscpubsub`, run
// as a child process: this test binary re-executed into
// TestPubSubServeProcess. A child per scenario is the only way to give each
// its own database, because the function's shared service reads DATABASE_URL
// once per process; it also exercises exactly what a developer runs
// (functions-framework routing, binary-mode CloudEvents over HTTP, the pool,
// shutdown on SIGTERM) rather than a test double of it. The pstest server
// lives in this process, so tests can read its per-message delivery and ack
// counts.

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"cloud.google.com/go/pubsub/v2"
	"cloud.google.com/go/pubsub/v2/apiv1/pubsubpb"
	"cloud.google.com/go/pubsub/v2/pstest"
	"github.com/jackc/pgx/v5"

	function "example.com/pscmessages"
	"example.com/pscmessages/cmd/internal/localrun"
	"example.com/pscmessages/store/localpg"
	"example.com/pscmessages/store/localpg/localpgtest"
)

const serveArgsEnv = "PSCMESSAGES_TEST_SERVE_ARGS"

// TestPubSubServeProcess is not a test: it is the child process the tests
// start, running serve with its Pub/Sub side exactly as main does.
func TestPubSubServeProcess(t *testing.T) {
	args, ok := os.LookupEnv(serveArgsEnv)
	if !ok {
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// Stdin is a pipe the parent never writes to: EOF means the parent is
	// gone (a test binary killed by -timeout runs no cleanup), so shut down
	// rather than linger.
	ctx, orphaned := context.WithCancel(ctx)
	go func() {
		io.Copy(io.Discard, os.Stdin)
		orphaned()
	}()
	if err := localrun.Serve(&pubsubFlags{}).Run(ctx, strings.Fields(args)); err != nil {
		fmt.Fprintln(os.Stderr, "serve:", err)
		os.Exit(1)
	}
	os.Exit(0)
}

// psBuffer is an io.Writer safe for a child's output and a test's reads.
type psBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *psBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *psBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func psFreePort(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return fmt.Sprint(l.Addr().(*net.TCPAddr).Port)
}

// psStartServe starts the child (`go run ./cmd/pscpubsub`) with env on top of
// a cleaned environment and returns once it delivers Pub/Sub messages. It is
// stopped (SIGTERM, and must exit 0) at the end of the test unless stop was
// called.
func psStartServe(t testing.TB, env map[string]string, args ...string) *runner {
	t.Helper()
	s := startRunner(t, runnerOptions{args: append([]string{"-pubsub"}, args...), host: "127.0.0.1", env: env,
		unset: psUnset, cleanExit: true})
	select {
	case <-s.delivering:
		return s
	case <-s.exited:
		t.Fatalf("serve exited early: %v\n%s\n%s", s.cmd.ProcessState, s.stdout.String(), s.stderr.String())
	case <-time.After(30 * time.Second):
		t.Fatalf("serve did not start pulling in 30 s:\n%s\n%s", s.stdout.String(), s.stderr.String())
	}
	return nil
}

// psUnset is what a Pub/Sub child gets from its test only.
var psUnset = []string{"GOOGLE_CLOUD_PROJECT", "PUBSUB_*"}

func psTail(s string, n int) string {
	if len(s) > n {
		return "…" + s[len(s)-n:]
	}
	return s
}

// psEnv is a pstest server and a PostgreSQL cluster shared by a test's scenarios.
type psEnv struct {
	fake    *pstest.Server
	cluster *localpg.Cluster
	client  *pubsub.Client
}

const psProject = "test-project"

func newPSEnv(t testing.TB, opts localpg.Options) *psEnv {
	t.Helper()
	env := newPSClient(t)
	env.cluster = localpgtest.Start(t, opts)
	return env
}

// newPSClient starts pstest and a real client for it, without a database.
func newPSClient(t testing.TB) *psEnv {
	t.Helper()
	fake := pstest.NewServerWithAddress("127.0.0.1:0")
	t.Cleanup(func() { fake.Close() })
	client, err := pubsub.NewClient(context.Background(), psProject, emulatorOptions(fake.Addr)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	return &psEnv{fake: fake, client: client}
}

var psDBSeq int

// database creates an empty database and returns its URL.
func (e *psEnv) database(t testing.TB) string {
	t.Helper()
	psDBSeq++
	name := fmt.Sprintf("ps_%d", psDBSeq)
	if err := e.cluster.CreateDatabase(context.Background(), name); err != nil {
		t.Fatal(err)
	}
	return e.cluster.SuperuserURL(name)
}

// serve starts a child on database url pulling topic from this env's pstest.
func (e *psEnv) serve(t testing.TB, url, topic string, extraEnv map[string]string, args ...string) *runner {
	t.Helper()
	env := map[string]string{
		"DATABASE_URL":         url,
		"PUBSUB_EMULATOR_HOST": e.fake.Addr,
		"PUBSUB_PROJECT_ID":    psProject,
		"PUBSUB_TOPIC":         topic,
	}
	for k, v := range extraEnv {
		env[k] = v
	}
	return psStartServe(t, env, args...)
}

// publishAll publishes each payload and returns the message ids in order.
func (e *psEnv) publishAll(t testing.TB, topic string, payloads [][]byte) []string {
	t.Helper()
	ids, err := e.tryPublishAll(topic, payloads)
	if err != nil {
		t.Fatal(err)
	}
	return ids
}

// tryPublishAll is publishAll for goroutines other than the test's.
func (e *psEnv) tryPublishAll(topic string, payloads [][]byte) ([]string, error) {
	ctx := context.Background()
	pub := e.client.Publisher(topic)
	defer pub.Stop()
	results := make([]*pubsub.PublishResult, len(payloads))
	for i, p := range payloads {
		results[i] = pub.Publish(ctx, &pubsub.Message{Data: p})
	}
	ids := make([]string, len(payloads))
	for i, r := range results {
		id, err := r.Get(ctx)
		if err != nil {
			return nil, fmt.Errorf("publishing message %d: %w", i, err)
		}
		ids[i] = id
	}
	return ids, nil
}

// psIDPrefix is what the runner puts before the emulator's message ids for
// topic's subscription: the epoch it labelled the subscription with.
func psIDPrefix(t testing.TB, client *pubsub.Client, topic string) string {
	t.Helper()
	sub, err := client.SubscriptionAdminClient.GetSubscription(context.Background(),
		&pubsubpb.GetSubscriptionRequest{Subscription: "projects/" + psProject + "/subscriptions/" + topic + "-ingest"})
	if err != nil {
		t.Fatal(err)
	}
	epoch := sub.Labels[epochLabel]
	if epoch == "" {
		t.Fatalf("subscription %s has no %s label", sub.Name, epochLabel)
	}
	return idPrefix(epoch)
}

// psQueryInt runs a query returning one integer, on the connection to url
// the test keeps (localpgtest.QueryInt): tests poll through it.
func psQueryInt(t testing.TB, url, sql string, args ...any) int {
	t.Helper()
	n, err := localpgtest.QueryInt(t, url, sql, args...)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// psStoredRows counts the messages table's rows; 0 before the function's first
// delivery has created it.
func psStoredRows(t testing.TB, url string) int {
	t.Helper()
	if psQueryInt(t, url, "SELECT count(*) FROM pg_tables WHERE tablename = 'messages'") == 0 {
		return 0
	}
	return psQueryInt(t, url, "SELECT count(*) FROM messages")
}

// psWaitFor polls cond until it holds or the timeout passes.
func psWaitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// psContents makes n distinct contents under prefix and their payloads,
// alternately plain text and {"content": ...}, the two forms IngestPubSub
// stores.
func psContents(prefix string, n int) ([][]byte, []string) {
	payloads := make([][]byte, n)
	want := make([]string, n)
	for i := range n {
		want[i] = fmt.Sprintf("%s-%04d", prefix, i)
		if i%2 == 0 {
			payloads[i] = []byte(want[i]) // plain text
		} else {
			payloads[i], _ = contentJSON(want[i]) // {"content": ...}
		}
	}
	return payloads, want
}

// psAssertStoredOnce checks that every content is stored exactly once and
// nothing else under prefix.
func psAssertStoredOnce(t testing.TB, url, prefix string, want []string) {
	t.Helper()
	missing := psQueryInt(t, url, `SELECT count(*) FROM unnest($1::text[]) w WHERE NOT EXISTS (SELECT 1 FROM messages WHERE content = w)`, want)
	dups := psQueryInt(t, url, `SELECT count(*) FROM (SELECT content FROM messages WHERE content LIKE $1 GROUP BY content HAVING count(*) > 1) d`, prefix+"-%")
	total := psQueryInt(t, url, `SELECT count(*) FROM messages WHERE content LIKE $1`, prefix+"-%")
	if missing != 0 || dups != 0 || total != len(want) {
		t.Fatalf("%d rows for %d messages: %d missing, %d stored more than once", total, len(want), missing, dups)
	}
}

// e2eConcurrency is the runner's concurrency in the end-to-end tests: several
// deliveries in flight at once, as on the platform. (IngestPubSub decodes each
// request itself; through sdk-go's shared CloudEvent receiver, concurrent
// deliveries could hang until the next one arrived.)
const e2eConcurrency = "8"

func TestPubSubEndToEnd(t *testing.T) {
	env := newPSEnv(t, localpg.Options{})

	t.Run("every message stored once", func(t *testing.T) {
		url := env.database(t)
		env.serve(t, url, "many", nil, "-pubsub-concurrency", e2eConcurrency)
		const n = 200
		payloads, want := psContents("many", n)
		ids := env.publishAll(t, "many", payloads)
		psWaitFor(t, 30*time.Second, fmt.Sprintf("%d rows", n), func() bool {
			return psStoredRows(t, url) >= n
		})
		psAssertStoredOnce(t, url, "many", want)
		psWaitFor(t, 10*time.Second, "every message acked", func() bool {
			for _, id := range ids {
				if env.fake.Message(id).Acks == 0 {
					return false
				}
			}
			return true
		})
		redelivered := 0
		for _, id := range ids {
			if env.fake.Message(id).Deliveries > 1 {
				redelivered++
			}
		}
		if redelivered > 0 {
			t.Errorf("%d of %d messages were delivered more than once with nothing failing", redelivered, n)
		}
	})

	t.Run("shutdown mid-stream acks only what is stored", func(t *testing.T) {
		url := env.database(t)
		first := env.serve(t, url, "restart", nil, "-pubsub-concurrency", e2eConcurrency)
		const n, before = 150, 30
		payloads, want := psContents("restart", n)
		ids := env.publishAll(t, "restart", payloads[:before])
		psWaitFor(t, 30*time.Second, "the first part stored", func() bool {
			return psStoredRows(t, url) >= before
		})
		// Hold the table so that the rest is certainly in flight, not
		// stored, when the shutdown comes, however fast the machine: inserts
		// wait for the lock, reads do not.
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		holder, err := pgx.Connect(ctx, url)
		if err != nil {
			t.Fatal(err)
		}
		defer holder.Close(context.Background())
		hold, err := holder.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := hold.Exec(ctx, "LOCK TABLE messages IN EXCLUSIVE MODE"); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, env.publishAll(t, "restart", payloads[before:])...)
		psWaitFor(t, 30*time.Second, "an insert waiting for the held table", func() bool {
			return psQueryInt(t, url, "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = 'messages'::regclass") > 0
		})
		first.stop(t)
		stored := psStoredRows(t, url)
		if stored != before {
			t.Fatalf("%d rows stored while the table was held, want the %d stored before", stored, before)
		}
		// Nothing acked may be missing from the table.
		var acked []string
		for i, id := range ids {
			if env.fake.Message(id).Acks > 0 {
				acked = append(acked, want[i])
			}
		}
		if missing := psQueryInt(t, url, `SELECT count(*) FROM unnest($1::text[]) w WHERE NOT EXISTS (SELECT 1 FROM messages WHERE content = w)`, acked); missing != 0 {
			t.Fatalf("%d of %d acked messages are not stored", missing, len(acked))
		}
		t.Logf("stopped with %d of %d stored, %d acked", stored, n, len(acked))
		if err := hold.Rollback(ctx); err != nil {
			t.Fatal(err)
		}
		// A second run picks up the rest, and what the first stored but
		// could not ack is not stored twice.
		env.serve(t, url, "restart", nil, "-pubsub-concurrency", e2eConcurrency)
		psWaitFor(t, 30*time.Second, fmt.Sprintf("%d rows", n), func() bool {
			return psStoredRows(t, url) >= n
		})
		psAssertStoredOnce(t, url, "restart", want)
	})

	// One child for the single-message scenarios.
	url := env.database(t)
	s := env.serve(t, url, "single", nil, "-pubsub-concurrency", e2eConcurrency)

	t.Run("redelivery of a stored message stores nothing", func(t *testing.T) {
		ids := env.publishAll(t, "single", [][]byte{[]byte(`{"content": "redelivered-once"}`)})
		psWaitFor(t, 10*time.Second, "the message acked", func() bool { return env.fake.Message(ids[0]).Acks > 0 })
		// Deliver the same message again, as Pub/Sub may at any time:
		// the very CloudEvent the runner built, posted by its own code.
		m := env.fake.Message(ids[0])
		b := &bridge{
			subscription: "projects/" + psProject + "/subscriptions/single-ingest",
			source:       "//pubsub.googleapis.com/projects/" + psProject + "/topics/single",
			endpoint:     s.base + "/IngestPubSub",
			idPrefix:     psIDPrefix(t, env.client, "single"),
			client:       newDeliveryClient(1),
			timeout:      10 * time.Second,
			log:          slog.New(slog.DiscardHandler),
		}
		for range 2 {
			if _, err := b.deliver(context.Background(), &pubsub.Message{ID: m.ID, Data: m.Data, PublishTime: m.PublishTime}); err != nil {
				t.Fatalf("redelivery not accepted: %v", err)
			}
		}
		if n := psQueryInt(t, url, "SELECT count(*) FROM messages WHERE content = 'redelivered-once'"); n != 1 {
			t.Fatalf("%d rows after three deliveries, want 1", n)
		}
	})

	t.Run("poison message is dead-lettered and acked once", func(t *testing.T) {
		ids := env.publishAll(t, "single", [][]byte{{0xff, 0xfe, 'x'}})
		psWaitFor(t, 10*time.Second, "the message acked", func() bool { return env.fake.Message(ids[0]).Acks > 0 })
		source := "//pubsub.googleapis.com/projects/" + psProject + "/topics/single"
		if n := psQueryInt(t, url, "SELECT count(*) FROM dead_letters WHERE event_id = $1 AND event_source = $2 AND reason LIKE '%UTF-8%'", psIDPrefix(t, env.client, "single")+ids[0], source); n != 1 {
			t.Fatalf("%d dead letters for %s, want 1", n, ids[0])
		}
		// Long enough for a nack's pause and a redelivery, were there one.
		time.Sleep(nackDelay + 500*time.Millisecond)
		if m := env.fake.Message(ids[0]); m.Deliveries != 1 || m.Acks != 1 {
			t.Fatalf("poison message delivered %d times, acked %d times; want once each", m.Deliveries, m.Acks)
		}
		if n := psQueryInt(t, url, "SELECT count(*) FROM messages WHERE content LIKE '%x'"); n != 0 {
			t.Fatalf("poison message stored as %d rows", n)
		}
	})

	// The walkthrough of LOCAL.md, with the runner's own
	// in-process emulator and the publish command.
	t.Run("walkthrough with the built-in emulator", func(t *testing.T) {
		url := env.database(t)
		s := psStartServe(t, map[string]string{"DATABASE_URL": url})
		if s.emulator == "" {
			t.Fatalf("no export PUBSUB_EMULATOR_HOST line in:\n%s", s.stdout.String())
		}
		t.Setenv("PUBSUB_EMULATOR_HOST", s.emulator)
		t.Setenv("PUBSUB_PROJECT_ID", "")
		t.Setenv("GOOGLE_CLOUD_PROJECT", "")
		t.Setenv("PUBSUB_TOPIC", "")
		var stdout, stderr bytes.Buffer
		if err := publish(context.Background(), []string{"-json", "hi from the walkthrough"}, nil, &stdout, &stderr); err != nil {
			t.Fatalf("publish: %v\n%s", err, stderr.String())
		}
		var got struct{ Messages []string }
		psWaitFor(t, 10*time.Second, "GET / to list the message", func() bool {
			resp, err := http.Get(s.base + "/")
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			return json.NewDecoder(resp.Body).Decode(&got) == nil && len(got.Messages) == 1
		})
		if got.Messages[0] != "hi from the walkthrough" {
			t.Fatalf("GET / = %q", got.Messages)
		}
	})
}

// TestPubSubDatabaseOutage stops PostgreSQL for 3 s while messages stream
// in: deliveries fail, are nacked and come back, and in the end every
// message is stored exactly once.
func TestPubSubDatabaseOutage(t *testing.T) {
	env := newPSEnv(t, localpg.Options{})
	url := env.cluster.SuperuserURL("postgres")
	s := env.serve(t, url, "outage", map[string]string{"DB_QUERY_TIMEOUT": "1s", "DB_CONNECT_TIMEOUT": "1s"}, "-pubsub-concurrency", e2eConcurrency)
	const n = 300
	payloads, want := psContents("outage", n)

	// Publish at ~100 messages/s so the outage falls mid-stream.
	idc := make(chan []string, 1)
	go func() {
		var ids []string
		for i := 0; i < n; i += 20 {
			batch, err := env.tryPublishAll("outage", payloads[i:i+20])
			if err != nil {
				t.Error(err)
			}
			ids = append(ids, batch...)
			time.Sleep(200 * time.Millisecond)
		}
		idc <- ids
	}()
	ctx := context.Background()
	time.Sleep(time.Second)
	if err := env.cluster.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * time.Second)
	if err := env.cluster.Start(ctx); err != nil {
		t.Fatal(err)
	}
	ids := <-idc
	if t.Failed() {
		t.FailNow()
	}
	psWaitFor(t, 30*time.Second, fmt.Sprintf("%d rows", n), func() bool {
		return psStoredRows(t, url) >= n
	})
	psAssertStoredOnce(t, url, "outage", want)
	redelivered := 0
	for _, id := range ids {
		if env.fake.Message(id).Deliveries > 1 {
			redelivered++
		}
	}
	if redelivered == 0 {
		t.Fatal("no message was redelivered: the outage did not hit the stream")
	}
	if !strings.Contains(s.stderr.String(), "delivery failed") {
		t.Error("failed deliveries were not logged")
	}
	t.Logf("%d of %d messages delivered more than once", redelivered, n)
}

// TestPubSubDelivery runs the runner in this process against a plain HTTP
// handler standing in for IngestPubSub, to pin down what the end-to-end tests
// cannot see: the exact shape of the request, the concurrency bound, the
// pause before a nack, and shutdown.
func TestPubSubDelivery(t *testing.T) {
	env := newPSClient(t)
	fake, client := env.fake, env.client
	var logs psBuffer

	// run delivers topic's messages to h and returns the runner's stop.
	run := func(t *testing.T, topic string, concurrency int, h http.HandlerFunc) func() {
		t.Helper()
		srv := httptest.NewServer(h)
		t.Cleanup(srv.Close)
		stop, err := startPubSub(context.Background(), pubsubConfig{
			Project: psProject, Topic: topic, Concurrency: concurrency,
			Endpoint: srv.URL + "/IngestPubSub", Emulator: fake.Addr,
			Out: io.Discard, Log: slog.New(slog.NewTextHandler(&logs, nil)),
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(stop) // before srv.Close, which waits for open requests
		return stop
	}
	acked := func(id string) bool { return fake.Message(id).Acks > 0 }

	t.Run("the request is Eventarc's", func(t *testing.T) {
		type capture struct {
			method, path string
			header       http.Header
			body         []byte
		}
		got := make(chan capture, 10)
		run(t, "shape", 1, func(w http.ResponseWriter, r *http.Request) {
			body, _ := io.ReadAll(r.Body)
			got <- capture{r.Method, r.URL.Path, r.Header.Clone(), body}
			w.WriteHeader(http.StatusNoContent)
		})
		pub := client.Publisher("shape")
		id, err := pub.Publish(context.Background(), &pubsub.Message{Data: []byte("héllo"), Attributes: map[string]string{"origin": "test"}}).Get(context.Background())
		pub.Stop()
		if err != nil {
			t.Fatal(err)
		}
		var c capture
		select {
		case c = <-got:
		case <-time.After(10 * time.Second):
			t.Fatal("no delivery")
		}
		published := fake.Message(id).PublishTime
		ceID := psIDPrefix(t, client, "shape") + id // the emulator's id, qualified by its epoch
		for name, want := range map[string]string{
			"Content-Type":   "application/json",
			"Ce-Id":          ceID,
			"Ce-Source":      "//pubsub.googleapis.com/projects/" + psProject + "/topics/shape",
			"Ce-Type":        "google.cloud.pubsub.topic.v1.messagePublished",
			"Ce-Specversion": "1.0",
		} {
			if v := c.header.Get(name); v != want {
				t.Errorf("%s: %q, want %q", name, v, want)
			}
		}
		if ceTime, err := time.Parse(time.RFC3339Nano, c.header.Get("Ce-Time")); err != nil || !ceTime.Equal(published) {
			t.Errorf("ce-time %q (%v), want the publish time %v", c.header.Get("Ce-Time"), err, published)
		}
		if c.method != "POST" || c.path != "/IngestPubSub" {
			t.Errorf("%s %s, want POST /IngestPubSub", c.method, c.path)
		}
		var body struct {
			Message struct {
				Data        string            `json:"data"`
				Attributes  map[string]string `json:"attributes"`
				MessageID   string            `json:"messageId"`
				PublishTime string            `json:"publishTime"`
			} `json:"message"`
			Subscription string `json:"subscription"`
		}
		if err := json.Unmarshal(c.body, &body); err != nil {
			t.Fatalf("body %s: %v", c.body, err)
		}
		m := body.Message
		if m.Data != base64.StdEncoding.EncodeToString([]byte("héllo")) || m.Attributes["origin"] != "test" ||
			m.MessageID != ceID || m.PublishTime != c.header.Get("Ce-Time") ||
			body.Subscription != "projects/"+psProject+"/subscriptions/shape-ingest" {
			t.Errorf("body %s", c.body)
		}
		// And the function's own decoding of it.
		var d function.MessagePublishedData
		if err := json.Unmarshal(c.body, &d); err != nil || string(d.Message.Data) != "héllo" || d.Message.MessageID != ceID || !d.Message.PublishTime.Equal(published) {
			t.Errorf("function.MessagePublishedData: %+v, %v", d, err)
		}
		psWaitFor(t, 10*time.Second, "the ack", func() bool { return acked(id) })
	})

	t.Run("at most concurrency deliveries at once", func(t *testing.T) {
		const concurrency, n = 4, 40
		var mu sync.Mutex
		inFlight, most := 0, 0
		run(t, "bound", concurrency, func(w http.ResponseWriter, r *http.Request) {
			mu.Lock()
			inFlight++
			most = max(most, inFlight)
			mu.Unlock()
			time.Sleep(30 * time.Millisecond)
			mu.Lock()
			inFlight--
			mu.Unlock()
		})
		payloads, _ := psContents("bound", n)
		ids := env.publishAll(t, "bound", payloads)
		psWaitFor(t, 20*time.Second, "every message acked", func() bool {
			for _, id := range ids {
				if !acked(id) {
					return false
				}
			}
			return true
		})
		mu.Lock()
		defer mu.Unlock()
		if most != concurrency {
			t.Fatalf("at most %d deliveries at once, want %d", most, concurrency)
		}
	})

	t.Run("failures are nacked after a pause and redelivered", func(t *testing.T) {
		var mu sync.Mutex
		var at []time.Time
		run(t, "retry", 1, func(w http.ResponseWriter, r *http.Request) {
			mu.Lock()
			defer mu.Unlock()
			at = append(at, time.Now())
			switch len(at) {
			case 1:
				http.Error(w, "function execution failed", http.StatusInternalServerError)
			case 2:
				w.Header().Set("Retry-After", "2")
				http.Error(w, "database unavailable", http.StatusServiceUnavailable)
			}
		})
		ids := env.publishAll(t, "retry", [][]byte{[]byte("x")})
		psWaitFor(t, 15*time.Second, "the ack", func() bool { return acked(ids[0]) })
		mu.Lock()
		defer mu.Unlock()
		if len(at) != 3 || fake.Message(ids[0]).Deliveries != 3 {
			t.Fatalf("%d attempts, %d deliveries; want 3", len(at), fake.Message(ids[0]).Deliveries)
		}
		if gap := at[1].Sub(at[0]); gap < nackDelay-100*time.Millisecond {
			t.Errorf("redelivered %v after a 500, want a pause of %v", gap, nackDelay)
		}
		if gap := at[2].Sub(at[1]); gap < 2*time.Second-100*time.Millisecond {
			t.Errorf("redelivered %v after Retry-After: 2", gap)
		}
		if !strings.Contains(logs.String(), "delivery failed") {
			t.Error("failures not logged")
		}
	})

	// blockingHandler holds each request until release is closed, then
	// answers status; it reports whether the request was canceled meanwhile.
	blockingHandler := func(status int) (h http.HandlerFunc, entered chan struct{}, release chan struct{}, canceled chan error) {
		entered, release, canceled = make(chan struct{}, 10), make(chan struct{}), make(chan error, 10)
		return func(w http.ResponseWriter, r *http.Request) {
			entered <- struct{}{}
			<-release
			canceled <- r.Context().Err()
			w.WriteHeader(status)
		}, entered, release, canceled
	}

	for _, tc := range []struct {
		name    string
		status  int
		wantAck bool
	}{
		{"shutdown lets an in-flight delivery finish and acks it", http.StatusOK, true},
		{"a delivery failing during shutdown is nacked at once, not acked", http.StatusInternalServerError, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			topic := fmt.Sprintf("shutdown%d", tc.status)
			h, entered, release, canceled := blockingHandler(tc.status)
			stop := run(t, topic, 2, h)
			ids := env.publishAll(t, topic, [][]byte{[]byte("x")})
			select {
			case <-entered:
			case <-time.After(10 * time.Second):
				t.Fatal("no delivery")
			}
			stopped := make(chan struct{})
			go func() { stop(); close(stopped) }()
			select {
			case <-stopped:
				t.Fatal("stop returned while a delivery was in flight")
			case <-time.After(300 * time.Millisecond):
			}
			released := time.Now()
			close(release)
			if err := <-canceled; err != nil {
				t.Errorf("shutdown canceled the in-flight delivery: %v", err)
			}
			select {
			case <-stopped:
			case <-time.After(10 * time.Second):
				t.Fatal("stop did not return after the delivery finished")
			}
			if took := time.Since(released); took > nackDelay/2 {
				t.Errorf("stop took %v after the answer", took)
			}
			if got := acked(ids[0]); got != tc.wantAck {
				t.Fatalf("acked = %v, want %v", got, tc.wantAck)
			}
			if tc.wantAck {
				return
			}
			// Not acked, so not lost: the next run gets it.
			run(t, topic, 1, func(w http.ResponseWriter, r *http.Request) {})
			psWaitFor(t, 15*time.Second, "the redelivery acked", func() bool { return acked(ids[0]) })
		})
	}
}

func TestIngestEndpoint(t *testing.T) {
	for _, tc := range []struct{ target, want, err string }{
		{"", "http://h:1/IngestPubSub", ""},
		{"IngestPubSub", "http://h:1/", ""},
		{"Messages", "", "does not serve IngestPubSub"},
	} {
		got, err := ingestEndpoint("http://h:1", tc.target)
		if got != tc.want || (err == nil) != (tc.err == "") || (err != nil && !strings.Contains(err.Error(), tc.err)) {
			t.Errorf("FUNCTION_TARGET=%q: %q, %v; want %q, %q", tc.target, got, err, tc.want, tc.err)
		}
	}
}

// TestPubSubFlags covers when the runner leaves Pub/Sub alone or refuses to
// start; starting it is what the end-to-end tests do.
func TestPubSubFlags(t *testing.T) {
	for _, tc := range []struct {
		name     string
		args     []string
		emulator string
		target   string
		err      string // "" means a no-op start
	}{
		{name: "switched off", args: []string{"-pubsub=false"}},
		{name: "emulator but switched off", args: []string{"-pubsub=false"}, emulator: "127.0.0.1:1"},
		{name: "emulator but Messages only", emulator: "127.0.0.1:1", target: "Messages"},
		{name: "asked for but Messages only", args: []string{"-pubsub"}, target: "Messages", err: "does not serve IngestPubSub"},
		{name: "bad concurrency", args: []string{"-pubsub", "-pubsub-concurrency", "0"}, err: "at least 1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("PUBSUB_EMULATOR_HOST", tc.emulator)
			t.Setenv("FUNCTION_TARGET", tc.target)
			fs := flag.NewFlagSet("serve", flag.ContinueOnError)
			f := &pubsubFlags{}
			f.AddFlags(fs)
			if err := fs.Parse(tc.args); err != nil {
				t.Fatal(err)
			}
			stop, err := f.Start(context.Background(), "http://127.0.0.1:1")
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			stop()
		})
	}
}

// publishFake is a pstest server that the publish command reaches through
// PUBSUB_EMULATOR_HOST, with no project or topic set in the environment.
func publishFake(t *testing.T) *pstest.Server {
	fake := pstest.NewServerWithAddress("127.0.0.1:0")
	t.Cleanup(func() { fake.Close() })
	t.Setenv("PUBSUB_EMULATOR_HOST", fake.Addr)
	t.Setenv("PUBSUB_PROJECT_ID", "")
	t.Setenv("GOOGLE_CLOUD_PROJECT", "")
	t.Setenv("PUBSUB_TOPIC", "")
	return fake
}

func TestPublish(t *testing.T) {
	fake := publishFake(t)
	for _, topic := range []string{"projects/local-project/topics/messages", "projects/p2/topics/other"} {
		if _, err := fake.GServer.CreateTopic(context.Background(), &pubsubpb.Topic{Name: topic}); err != nil {
			t.Fatal(err)
		}
	}

	cases := []struct {
		name      string
		args      []string
		stdin     string
		topic     string // full name messages should land in
		wantData  []string
		wantAttrs map[string]string
		wantErr   string // substring; "" means success
	}{
		{name: "arguments", args: []string{"one", `{"content":"two"}`}, topic: "projects/local-project/topics/messages",
			wantData: []string{"one", `{"content":"two"}`}},
		{name: "stdin lines", stdin: "a\n\n  \nb\r\nc", topic: "projects/local-project/topics/messages",
			wantData: []string{"a", "b", "c"}},
		{name: "json", args: []string{"-json", `hi <&> "q"`}, topic: "projects/local-project/topics/messages",
			wantData: []string{`{"content":"hi <&> \"q\""}`}},
		{name: "attributes, project and topic", args: []string{"-project", "p2", "-topic", "other", "-attr", "k=v", "-attr", "eq=a=b", "x"},
			topic: "projects/p2/topics/other", wantData: []string{"x"}, wantAttrs: map[string]string{"k": "v", "eq": "a=b"}},
		{name: "missing topic", args: []string{"-topic", "nope", "x", "y"}, wantErr: "2 of 2 messages not published"},
		{name: "bad attribute", args: []string{"-attr", "novalue", "x"}, wantErr: "want key=value"},
		{name: "nothing", stdin: "\n\n", wantErr: "nothing to publish"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			fake.ClearMessages()
			var stdout, stderr bytes.Buffer
			err := publish(context.Background(), tc.args, strings.NewReader(tc.stdin), &stdout, &stderr)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				if tc.name == "missing topic" && (strings.Count(stderr.String(), "not published") != 2 || !strings.Contains(stderr.String(), "does not exist")) {
					t.Fatalf("stderr does not report each failure:\n%s", stderr.String())
				}
				return
			}
			if err != nil {
				t.Fatalf("publish: %v\n%s", err, stderr.String())
			}
			printed := strings.Fields(stdout.String())
			if len(printed) != len(tc.wantData) {
				t.Fatalf("printed %q, want %d ids", printed, len(tc.wantData))
			}
			for i, id := range printed {
				m := fake.Message(id)
				if m == nil {
					t.Fatalf("printed id %q is not a published message", id)
				}
				if string(m.Data) != tc.wantData[i] || m.Topic != tc.topic {
					t.Errorf("message %d: %q in %s, want %q in %s", i, m.Data, m.Topic, tc.wantData[i], tc.topic)
				}
				for k, v := range tc.wantAttrs {
					if m.Attributes[k] != v {
						t.Errorf("message %d: attribute %s = %q, want %q", i, k, m.Attributes[k], v)
					}
				}
			}
		})
	}
}

// BenchmarkIngestViaPubSub measures messages per second from publish to
// committed row: publish with the client library, pull, POST as a CloudEvent
// to the functions framework, store, ack. Each concurrency level has its own
// database and runner; setup is not timed.
func BenchmarkIngestViaPubSub(b *testing.B) {
	env := newPSEnv(b, localpg.Options{Durable: true})
	for _, c := range []int{1, 8, 32} {
		url := env.database(b)
		topic := fmt.Sprintf("bench%d", c)
		env.serve(b, url, topic, nil, "-pubsub-concurrency", fmt.Sprint(c))
		b.Run(fmt.Sprintf("concurrency=%d", c), func(b *testing.B) {
			before := psStoredRows(b, url)
			payloads, _ := psContents(fmt.Sprintf("bench%d-%d", c, before), b.N)
			b.ResetTimer()
			start := time.Now()
			env.publishAll(b, topic, payloads)
			for psStoredRows(b, url) < before+b.N {
				time.Sleep(5 * time.Millisecond)
			}
			elapsed := time.Since(start)
			b.StopTimer()
			b.ReportMetric(float64(b.N)/elapsed.Seconds(), "msgs/s")
		})
	}
}

// BenchmarkIngestCloudEvents is the same path without Pub/Sub: the runner's
// own CloudEvent POSTs at the same concurrency. Against
// BenchmarkIngestViaPubSub it shows what pstest costs.
func BenchmarkIngestCloudEvents(b *testing.B) {
	env := newPSEnv(b, localpg.Options{Durable: true})
	for _, c := range []int{1, 8, 32} {
		url := env.database(b)
		topic := fmt.Sprintf("direct%d", c)
		s := env.serve(b, url, topic, nil)
		br := &bridge{
			subscription: "projects/" + psProject + "/subscriptions/" + topic + "-ingest",
			source:       "//pubsub.googleapis.com/projects/" + psProject + "/topics/" + topic,
			endpoint:     s.base + "/IngestPubSub",
			client:       newDeliveryClient(c),
			timeout:      30 * time.Second,
			log:          slog.New(slog.DiscardHandler),
		}
		run := 0
		b.Run(fmt.Sprintf("concurrency=%d", c), func(b *testing.B) {
			run++
			payloads, _ := psContents(fmt.Sprintf("direct%d-%d", c, run), b.N)
			next := make(chan int)
			var wg sync.WaitGroup
			b.ResetTimer()
			start := time.Now()
			for range c {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := range next {
						m := &pubsub.Message{ID: fmt.Sprintf("r%d-%d", run, i), Data: payloads[i], PublishTime: time.Now()}
						if _, err := br.deliver(context.Background(), m); err != nil {
							b.Error(err)
						}
					}
				}()
			}
			for i := range b.N {
				next <- i
			}
			close(next)
			wg.Wait()
			elapsed := time.Since(start)
			b.StopTimer()
			b.ReportMetric(float64(b.N)/elapsed.Seconds(), "msgs/s")
		})
	}
}
