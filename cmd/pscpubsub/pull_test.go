package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"cloud.google.com/go/pubsub/v2/apiv1/pubsubpb"

	"example.com/pscmessages/store/localpg"
)

// startPull starts `go run ./cmd/pscpubsub pull` as a child on database
// url, pulling subscription sub of env's pstest.
func (e *psEnv) startPull(t testing.TB, url, sub string, args ...string) *runner {
	t.Helper()
	return startRunner(t, runnerOptions{process: "TestMainProcess", args: append([]string{"pull", "-subscription", sub}, args...),
		env:   map[string]string{"DATABASE_URL": url, "PUBSUB_EMULATOR_HOST": e.fake.Addr, "PUBSUB_PROJECT_ID": psProject},
		unset: psUnset, cleanExit: true})
}

// createSubscription creates topic and a pull subscription sub on it.
func (e *psEnv) createSubscription(t testing.TB, topic, sub string) {
	t.Helper()
	ctx := context.Background()
	if _, err := e.client.TopicAdminClient.CreateTopic(ctx, &pubsubpb.Topic{Name: "projects/" + psProject + "/topics/" + topic}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.client.SubscriptionAdminClient.CreateSubscription(ctx, &pubsubpb.Subscription{
		Name: "projects/" + psProject + "/subscriptions/" + sub, Topic: "projects/" + psProject + "/topics/" + topic, AckDeadlineSeconds: 10,
	}); err != nil {
		t.Fatal(err)
	}
}

// TestPullStoresEachMessageOnce: the pull subcommand stores every message of
// its subscription once, through IngestPubSub's decoding (both content
// forms, the same keys), keeps poison in dead_letters, logs no content, and
// drains on SIGTERM with exit 0.
func TestPullStoresEachMessageOnce(t *testing.T) {
	env := newPSEnv(t, localpg.Options{})
	url := env.database(t)
	env.createSubscription(t, "bulk", "bulk-pull")
	payloads, want := psContents("pulled", 500)
	env.publishAll(t, "bulk", payloads)
	env.publishAll(t, "bulk", [][]byte{[]byte("\xff\xfe not UTF-8"), []byte(`{"content": 5}`)})
	p := env.startPull(t, url, "bulk-pull")
	psWaitFor(t, 60*time.Second, "500 messages and 2 dead letters", func() bool {
		return psStoredRows(t, url) == len(want) && psQueryInt(t, url, "SELECT count(*) FROM dead_letters") == 2
	})
	psAssertStoredOnce(t, url, "pulled", want)
	// The keys are the push path's: topic, message id and publish time.
	if n := psQueryInt(t, url, `SELECT count(*) FROM messages m JOIN idempotency_keys k ON k.message_id = m.id WHERE k.key LIKE 'pubsub://pubsub.googleapis.com/projects/`+psProject+`/topics/bulk#%@%'`); n != len(want) {
		t.Fatalf("%d of %d rows keyed by topic, message id and publish time", n, len(want))
	}
	p.stop(t)
	if out := p.stderr.String(); strings.Contains(out, "pulled-0") {
		t.Fatalf("content in the log:\n%s", out)
	}
	if !strings.Contains(p.stderr.String(), "stopped pulling") {
		t.Fatalf("no drain line:\n%s", p.stderr.String())
	}
}
