//go:build e2e

package main

// The runner against the official Pub/Sub emulator, fed by the command users
// type in production: `gcloud pubsub topics publish`. pstest stays the tool
// of the fast tests and the throughput benchmark (pubsub_test.go); these
// check that what holds there holds with the real tools.

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"cloud.google.com/go/pubsub/v2"

	"example.com/pscmessages/store/localpg"
	"example.com/pscmessages/store/localpg/localpgtest"
)

const emuProject = "emu-project"

// emuEnv is the official emulator and a PostgreSQL cluster for one test.
type emuEnv struct {
	emu     *emulator
	cluster *localpg.Cluster
	dbs     int
}

func newEmuEnv(t testing.TB) *emuEnv {
	t.Helper()
	env := &emuEnv{emu: startEmulator(t, emuProject)}
	env.cluster = localpgtest.Start(t, localpg.Options{})
	return env
}

func (e *emuEnv) database(t testing.TB) string {
	t.Helper()
	e.dbs++
	name := fmt.Sprintf("emu_%d", e.dbs)
	if err := e.cluster.CreateDatabase(context.Background(), name); err != nil {
		t.Fatal(err)
	}
	return e.cluster.SuperuserURL(name)
}

// serve starts `go run ./cmd/pscpubsub` on url, pulling topic from the emulator.
func (e *emuEnv) serve(t testing.TB, url, topic string) *runner {
	t.Helper()
	return e.serveAt(t, url, topic, e2eConcurrency)
}

func (e *emuEnv) serveAt(t testing.TB, url, topic, concurrency string) *runner {
	t.Helper()
	return psStartServe(t, map[string]string{
		"DATABASE_URL":         url,
		"PUBSUB_EMULATOR_HOST": e.emu.Addr,
		"PUBSUB_PROJECT_ID":    e.emu.Project,
		"PUBSUB_TOPIC":         topic,
	}, "-pubsub-concurrency", concurrency)
}

// gcloudPublish publishes with the real CLI and returns the message id.
func (e *emuEnv) gcloudPublish(t *testing.T, topic string, args ...string) string {
	t.Helper()
	out := e.emu.gcloud(t, append([]string{"pubsub", "topics", "publish", topic, "--format=value(messageIds)"}, args...)...)
	id := strings.TrimSpace(out)
	if id == "" {
		t.Fatalf("gcloud pubsub topics publish printed no message id")
	}
	return id
}

// emuDeadLetters counts the dead letters of topic's message id (whatever the
// runner qualified it with) whose reason contains reason.
func emuDeadLetters(t *testing.T, url, topic, id, reason string) int {
	t.Helper()
	if psQueryInt(t, url, "SELECT count(*) FROM pg_tables WHERE tablename = 'dead_letters'") == 0 {
		return 0
	}
	return psQueryInt(t, url, `SELECT count(*) FROM dead_letters WHERE event_source = $1
		AND (event_id = $2 OR event_id LIKE '%-' || $2) AND reason LIKE '%' || $3 || '%'`,
		"//pubsub.googleapis.com/projects/"+emuProject+"/topics/"+topic, id, reason)
}

func emuRows(t *testing.T, url, content string) int {
	t.Helper()
	if psStoredRows(t, url) == 0 {
		return 0
	}
	return psQueryInt(t, url, "SELECT count(*) FROM messages WHERE content = $1", content)
}

// TestOfficialEmulatorGcloudPublish: every kind of message a user can publish
// ends as exactly one row or exactly one dead letter.
func TestOfficialEmulatorGcloudPublish(t *testing.T) {
	env := newEmuEnv(t)
	url := env.database(t)
	const topic = "gcloud-topic"
	s := env.serve(t, url, topic)

	rows := map[string]string{} // content → how it was published
	rows["plain text from gcloud"] = env.gcloudPublish(t, topic, "--message=plain text from gcloud")
	rows["JSON from gcloud"] = env.gcloudPublish(t, topic, `--message={"content": "JSON from gcloud"}`)
	rows["with attributes"] = env.gcloudPublish(t, topic, "--message=with attributes", "--attribute=origin=gcloud,kind=test")
	rows[`{"not content": 1}`] = env.gcloudPublish(t, topic, `--message={"not content": 1}`)

	type dead struct{ id, reason string }
	var deads []dead
	// Over MAX_CONTENT_BYTES (64 KiB) but well within Pub/Sub's 10 MB and a
	// command line's 128 KiB argument.
	big := strings.Repeat("x", 70000)
	deads = append(deads, dead{env.gcloudPublish(t, topic, "--message="+big), "exceeds"})
	deads = append(deads, dead{env.gcloudPublish(t, topic, `--message={"content": 42}`), "must be a string"})

	// Bytes that are not UTF-8: gcloud takes --message as text and encodes
	// it as UTF-8 (googlecloudsdk/core/util/http_encoding.Encode), so it
	// cannot send them; Cloud SDK 528 crashes with UnicodeEncodeError. They
	// reach the topic from other publishers, here `go run ./cmd/pscpubsub publish`.
	notUTF8 := "\xff\xfe not UTF-8"
	if out, err := env.emu.tryGcloud("pubsub", "topics", "publish", topic, "--message="+notUTF8, "--format=value(messageIds)"); err == nil {
		deads = append(deads, dead{strings.TrimSpace(out), "UTF-8"})
		t.Log("gcloud now publishes bytes that are not UTF-8; the test covers both publishers")
	}
	t.Setenv("PUBSUB_EMULATOR_HOST", env.emu.Addr)
	var stdout, stderr bytes.Buffer
	if err := publish(context.Background(), []string{"-project", emuProject, "-topic", topic}, strings.NewReader(notUTF8+"\n"), &stdout, &stderr); err != nil {
		t.Fatalf("publish: %v\n%s", err, stderr.String())
	}
	deads = append(deads, dead{strings.TrimSpace(stdout.String()), "UTF-8"})

	psWaitFor(t, 60*time.Second, "every message stored or dead-lettered", func() bool {
		for content := range rows {
			if emuRows(t, url, content) == 0 {
				return false
			}
		}
		for _, d := range deads {
			if emuDeadLetters(t, url, topic, d.id, d.reason) == 0 {
				return false
			}
		}
		return true
	})
	// Long enough for a nack's pause and a redelivery, were there one.
	time.Sleep(nackDelay + 2*time.Second)
	for content, id := range rows {
		if n := emuRows(t, url, content); n != 1 {
			t.Errorf("message %s (%q): %d rows, want 1", id, content, n)
		}
	}
	for _, d := range deads {
		if n := emuDeadLetters(t, url, topic, d.id, ""); n != 1 {
			t.Errorf("message %s: %d dead letters, want 1", d.id, n)
		}
	}
	if total := psQueryInt(t, url, "SELECT count(*) FROM messages"); total != len(rows) {
		t.Errorf("%d rows, want %d", total, len(rows))
	}
	stopAt := time.Now()
	s.stop(t)
	t.Logf("stopped in %v", time.Since(stopAt))
	if strings.Contains(s.stderr.String(), "delivery failed") {
		t.Errorf("a delivery failed with nothing wrong:\n%s", s.stderr.String())
	}
}

// TestOfficialEmulatorRestart restarts the emulator under a running runner:
// it notices, says so, recreates its topic and subscription and goes on. The
// restarted emulator numbers its messages from 1 again, while the database
// keeps the ids of the first run; no new message may be taken for an old one.
func TestOfficialEmulatorRestart(t *testing.T) {
	env := newEmuEnv(t)
	url := env.database(t)
	const topic = "restart-topic"
	s := env.serve(t, url, topic)

	before := []string{"same content before and after", "first run 2", "first run 3"}
	var ids []string
	for _, c := range before {
		ids = append(ids, env.gcloudPublish(t, topic, "--message="+c))
	}
	psWaitFor(t, 30*time.Second, "the first run's messages stored", func() bool { return psStoredRows(t, url) == len(before) })

	start := time.Now()
	env.emu.restart(t)
	t.Logf("restarted in %v", time.Since(start))
	psWaitFor(t, 60*time.Second, "the runner to recreate its subscription", func() bool {
		return strings.Contains(s.stderr.String(), "recreated")
	})
	after := []string{"same content before and after", "second run 2", "second run 3"}
	var again []string
	for _, c := range after {
		again = append(again, env.gcloudPublish(t, topic, "--message="+c))
	}
	t.Logf("published after %v", time.Since(start))
	if fmt.Sprint(again) != fmt.Sprint(ids) {
		// Without reused ids the case this test is for (a new message
		// with an old message's id) is not exercised: passing would
		// prove nothing.
		t.Fatalf("the restarted emulator numbered its messages %v, not again %v as the first: the old-id case is not exercised", again, ids)
	}
	psWaitFor(t, 30*time.Second, "the second run's messages stored", func() bool {
		return psStoredRows(t, url) >= len(before)+len(after)
	})
	t.Logf("stored after %v", time.Since(start))
	time.Sleep(nackDelay + 2*time.Second)
	if n := emuRows(t, url, "same content before and after"); n != 2 {
		t.Errorf("the message published before and after the restart: %d rows, want 2", n)
	}
	for _, c := range after[1:] {
		if n := emuRows(t, url, c); n != 1 {
			t.Errorf("%q: %d rows, want 1", c, n)
		}
	}
	if n := psQueryInt(t, url, "SELECT count(*) FROM messages"); n != len(before)+len(after) {
		t.Errorf("%d rows, want %d", n, len(before)+len(after))
	}
	if psQueryInt(t, url, "SELECT count(*) FROM pg_tables WHERE tablename = 'dead_letters'") > 0 {
		if n := psQueryInt(t, url, "SELECT count(*) FROM dead_letters"); n != 0 {
			t.Errorf("%d dead letters, want none", n)
		}
	}
	// Ctrl-C must not wait out the client's reconnect backoff, which the
	// restart grew (the library's cap is 60 s; 29 s were seen).
	stopAt := time.Now()
	s.stop(t)
	if d := time.Since(stopAt); d > 15*time.Second {
		t.Errorf("the runner took %v to stop after the emulator's restart", d)
	}
	for _, want := range []string{"PUBSUB_EMULATOR_HOST=" + env.emu.Addr, "recreated"} {
		if !strings.Contains(s.stderr.String(), want) {
			t.Errorf("the runner's log does not mention %q:\n%s", want, s.stderr.String())
		}
	}
}

// BenchmarkIngestViaOfficialEmulator is BenchmarkIngestViaPubSub through the
// official emulator instead of pstest: publish with the client library (a
// gcloud process per message would measure gcloud), pull, POST, store, ack.
func BenchmarkIngestViaOfficialEmulator(b *testing.B) {
	env := &emuEnv{emu: startEmulator(b, emuProject)}
	env.cluster = localpgtest.Start(b, localpg.Options{Durable: true})
	client, err := pubsub.NewClient(context.Background(), emuProject, emulatorOptions(env.emu.Addr)...)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { client.Close() })
	pub := &psEnv{client: client}
	for _, c := range []int{1, 8, 32} {
		url := env.database(b)
		topic := fmt.Sprintf("bench%d", c)
		env.serveAt(b, url, topic, fmt.Sprint(c))
		b.Run(fmt.Sprintf("concurrency=%d", c), func(b *testing.B) {
			before := psStoredRows(b, url)
			payloads, _ := psContents(fmt.Sprintf("bench%d-%d", c, before), b.N)
			b.ResetTimer()
			start := time.Now()
			pub.publishAll(b, "projects/"+emuProject+"/topics/"+topic, payloads)
			for psStoredRows(b, url) < before+b.N {
				time.Sleep(5 * time.Millisecond)
			}
			elapsed := time.Since(start)
			b.StopTimer()
			b.ReportMetric(float64(b.N)/elapsed.Seconds(), "msgs/s")
		})
	}
}
