package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"cloud.google.com/go/pubsub/v2"
	"cloud.google.com/go/pubsub/v2/apiv1/pubsubpb"
	"cloud.google.com/go/pubsub/v2/pstest"
	"github.com/jackc/pgx/v5"
	"google.golang.org/api/option"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"example.com/pscmessages/store/localpg"
	"example.com/pscmessages/store/localpg/localpgtest"
)

const testProject = "test-project"

// TestPullStoresEachMessageOnce: the ingester stores every message of its
// subscription once, through IngestPubSub's decoding (both content forms,
// the push path's keys), keeps poison in dead_letters, logs no content,
// answers the startup probe on PORT, and drains on SIGTERM with exit 0.
func TestPullStoresEachMessageOnce(t *testing.T) {
	fake := pstest.NewServerWithAddress("127.0.0.1:0")
	t.Cleanup(func() { fake.Close() })
	ctx := context.Background()
	client, err := pubsub.NewClient(ctx, testProject, option.WithEndpoint(fake.Addr), option.WithoutAuthentication(),
		option.WithGRPCDialOption(grpc.WithTransportCredentials(insecure.NewCredentials())))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	topic, sub := "projects/"+testProject+"/topics/bulk", "projects/"+testProject+"/subscriptions/bulk-pull"
	if _, err := client.TopicAdminClient.CreateTopic(ctx, &pubsubpb.Topic{Name: topic}); err != nil {
		t.Fatal(err)
	}
	if _, err := client.SubscriptionAdminClient.CreateSubscription(ctx, &pubsubpb.Subscription{Name: sub, Topic: topic, AckDeadlineSeconds: 10}); err != nil {
		t.Fatal(err)
	}
	cluster := localpgtest.Start(t, localpg.Options{})
	if err := cluster.CreateDatabase(ctx, "pull"); err != nil {
		t.Fatal(err)
	}
	url := cluster.SuperuserURL("pull")

	// Alternately plain text and {"content": ...}, the two forms stored.
	const n = 200
	var payloads [][]byte
	for i := range n {
		text := fmt.Sprintf("pulled-%04d", i)
		if i%2 == 1 {
			b, _ := json.Marshal(map[string]string{"content": text})
			text = string(b)
		}
		payloads = append(payloads, []byte(text))
	}
	payloads = append(payloads, []byte("\xff\xfe not UTF-8"), []byte(`{"content": 5}`))
	pub := client.Publisher(topic)
	var results []*pubsub.PublishResult
	for _, p := range payloads {
		results = append(results, pub.Publish(ctx, &pubsub.Message{Data: p}))
	}
	for i, r := range results {
		if _, err := r.Get(ctx); err != nil {
			t.Fatalf("publishing message %d: %v", i, err)
		}
	}
	pub.Stop()

	p := startChild(t, map[string]string{"DATABASE_URL": url, "PUBSUB_EMULATOR_HOST": fake.Addr, "PUBSUB_PROJECT_ID": testProject},
		"-subscription", "bulk-pull")
	waitFor(t, 60*time.Second, fmt.Sprintf("%d messages and 2 dead letters", n), func() bool {
		return queryInt(t, url, "SELECT count(*) FROM pg_tables WHERE tablename IN ('messages', 'dead_letters')") == 2 &&
			queryInt(t, url, "SELECT count(*) FROM messages") == n && queryInt(t, url, "SELECT count(*) FROM dead_letters") == 2
	})
	if d := queryInt(t, url, "SELECT count(*) FROM (SELECT DISTINCT content FROM messages WHERE content LIKE 'pulled-%') c"); d != n {
		t.Fatalf("%d distinct contents among %d rows, want %d", d, n, n)
	}
	// The keys are the push path's: topic, message id and publish time.
	if k := queryInt(t, url, `SELECT count(*) FROM messages m JOIN idempotency_keys k ON k.message_id = m.id WHERE k.key LIKE 'pubsub://pubsub.googleapis.com/`+topic+`#%@%'`); k != n {
		t.Fatalf("%d of %d rows keyed by topic, message id and publish time", k, n)
	}
	resp, err := http.Get("http://127.0.0.1:" + p.port + "/")
	if err != nil {
		t.Fatalf("startup probe: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("startup probe: %s %s", resp.Status, body)
	}
	p.stop(t)
	out := p.stderr.String()
	if strings.Contains(out, "pulled-0") {
		t.Fatalf("content in the log:\n%s", out)
	}
	if !strings.Contains(out, "stopped pulling") {
		t.Fatalf("no drain line:\n%s", out)
	}
}

// queryInt runs a query returning one integer.
func queryInt(t *testing.T, url, sql string) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var n int
	if err := conn.QueryRow(ctx, sql).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}
