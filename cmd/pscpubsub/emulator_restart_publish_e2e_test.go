//go:build e2e

package main

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"cloud.google.com/go/pubsub/v2"
	"github.com/jackc/pgx/v5"
)

func pgxQueryRows(t *testing.T, url, sql string) ([]string, error) {
	conn, err := pgx.Connect(context.Background(), url)
	if err != nil {
		return nil, err
	}
	defer conn.Close(context.Background())
	rows, _ := conn.Query(context.Background(), sql)
	return pgx.CollectRows(rows, pgx.RowTo[string])
}

// TestPublishRightAfterEmulatorRestart: a message published as soon as a
// restarted official emulator accepts it is stored, every time. The runner
// recreates the topic it pulls together with its subscription; a topic
// without its subscription would accept a publish and discard it. Each round
// restarts the emulator and publishes in a tight loop (a failed publish, to
// a topic not there yet, is retried at once, with new content) until one is
// accepted, then
// publishes once more with gcloud, as the README's walkthrough does, and
// waits for both (up to 30 s) before the next restart, which would lose what
// the emulator has not delivered yet.
func TestPublishRightAfterEmulatorRestart(t *testing.T) {
	const rounds = 10
	env := newEmuEnv(t)
	url := env.database(t)
	const topic = "restart-publish"
	s := env.serve(t, url, topic)
	client, err := pubsub.NewClient(context.Background(), emuProject, emulatorOptions(env.emu.Addr)...)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	pub := client.Publisher(topic)
	defer pub.Stop()
	pub.PublishSettings.CountThreshold = 1 // each publish on its own
	pub.PublishSettings.DelayThreshold = 0

	var want, failed []string
	for round := range rounds {
		env.emu.restart(t)
		var content string
		deadline := time.Now().Add(60 * time.Second)
		tries := 0
		for {
			tries++
			// Each try has its own content: a publish the client gave up on
			// may still have been accepted (Pub/Sub publishes at least
			// once), and must then be stored once, not counted as a
			// duplicate of the try that succeeded.
			content = fmt.Sprintf("round %d, published at once, try %d", round, tries)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			_, err := pub.Publish(ctx, &pubsub.Message{Data: []byte(content)}).Get(ctx)
			cancel()
			if err == nil {
				break
			}
			failed = append(failed, content)
			if time.Now().After(deadline) {
				t.Fatalf("round %d: no publish accepted within 60 s of the restart (%d tries): %v", round, tries, err)
			}
			time.Sleep(5 * time.Millisecond)
		}
		want = append(want, content)
		g := fmt.Sprintf("round %d, from gcloud", round)
		env.gcloudPublish(t, topic, "--message="+g)
		want = append(want, g)
		t.Logf("round %d: accepted after %d tries", round, tries)
		// A restart loses what the emulator has not delivered yet: wait
		// for this round's messages before the next one.
		for deadline := time.Now().Add(30 * time.Second); emuRows(t, url, content)+emuRows(t, url, g) < 2 && time.Now().Before(deadline); {
			time.Sleep(100 * time.Millisecond)
		}
	}
	for deadline := time.Now().Add(60 * time.Second); psStoredRows(t, url) < len(want) && time.Now().Before(deadline); {
		time.Sleep(200 * time.Millisecond)
	}
	var lost []string
	for _, c := range want {
		if n := emuRows(t, url, c); n != 1 {
			lost = append(lost, fmt.Sprintf("%q: %d rows", c, n))
		}
	}
	for _, c := range failed {
		if n := emuRows(t, url, c); n > 1 {
			lost = append(lost, fmt.Sprintf("%q (a try the client gave up on): %d rows", c, n))
		}
	}
	if len(lost) > 0 {
		var stored, dead []string
		rows, _ := pgxQueryRows(t, url, "SELECT content FROM messages ORDER BY id")
		stored = rows
		if psQueryInt(t, url, "SELECT count(*) FROM pg_tables WHERE tablename = 'dead_letters'") > 0 {
			dead, _ = pgxQueryRows(t, url, "SELECT coalesce(event_id, '') || ': ' || reason FROM dead_letters ORDER BY id")
		}
		t.Logf("stored: %q\ndead letters: %q", stored, dead)
		t.Fatalf("%d of %d accepted messages not stored once: %s\nrunner log:\n%s", len(lost), len(want), strings.Join(lost, "; "), psTail(s.stderr.String(), 4000))
	}
}
