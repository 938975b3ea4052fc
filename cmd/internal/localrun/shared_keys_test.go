package localrun

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	function "example.com/pscmessages"
	"example.com/pscmessages/store/localpg"
	"example.com/pscmessages/store/localpg/localpgtest"
)

// TestTwoProcessesSharedKeys, with two real processes:
// two runners on one database receive the same Pub/Sub message ids and the
// same Idempotency-Keys in opposite orders, 64 requests at a time each, mixed
// with rows that conflict with nothing. No row that conflicts with nothing
// may get a 5xx, every key is stored exactly once, and PostgreSQL reports no
// deadlock (each one stalled both batches for deadlock_timeout and failed the
// whole batch).
func TestTwoProcessesSharedKeys(t *testing.T) {
	// Durable, as Cloud SQL is: commits that wait for the disk keep both
	// processes' batches open at once, which is when opposite orders meet.
	c := localpgtest.Start(t, localpg.Options{Durable: true})
	if err := c.CreateDatabase(context.Background(), "two"); err != nil {
		t.Fatal(err)
	}
	url := c.SuperuserURL("two")
	const (
		keys        = 3000 // shared by both processes, of each kind
		concurrency = 64
	)
	var procs []*runner
	for i := range 2 {
		s := startServeChild(t, psFreePort(t), map[string]string{"DATABASE_URL": url, "DB_MAX_CONNS": "4"})
		select {
		case <-s.ready:
		case <-s.exited:
			t.Fatalf("runner %d exited early", i)
		case <-time.After(60 * time.Second):
			t.Fatalf("runner %d did not start in 60 s", i)
		}
		procs = append(procs, s)
		// The first request opens the pool (and migrates), one process at a time.
		if r, err := http.Get(s.base + "/?limit=1"); err != nil || r.StatusCode != 200 {
			t.Fatalf("runner %d: first GET: %v %v", i, r, err)
		}
	}
	deadlocksBefore := psQueryInt(t, url, "SELECT deadlocks::int FROM pg_stat_database WHERE datname = current_database()")

	// One job is one request. Both processes get the same block of jobs at
	// once, process 0 in order and process 1 in reverse, and the next block
	// when both are done: shared keys meet in opposite orders all through
	// the run. A fifth of the jobs are rows of their own (no key shared).
	const block = 4 * concurrency
	type job struct {
		kind string // "event", "key" or "own"
		n    int
	}
	var jobs []job
	for n := range keys {
		jobs = append(jobs, job{"event", n}, job{"key", n})
		if n%2 == 0 {
			jobs = append(jobs, job{"own", n})
		}
	}
	var (
		sharedRetries atomic.Int64
		ownFailures   atomic.Int64
		errs          = make(chan string, 100)
	)
	report := func(format string, args ...any) {
		select {
		case errs <- fmt.Sprintf(format, args...):
		default:
		}
	}
	client := &http.Client{Timeout: 60 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: concurrency}}
	send := func(p int, base string, j job) {
		var req *http.Request
		switch j.kind {
		case "event":
			id := fmt.Sprint(1_000_000 + j.n)
			body, _ := json.Marshal(map[string]any{
				"message":      map[string]any{"data": base64.StdEncoding.EncodeToString([]byte("event " + id)), "messageId": id, "publishTime": "2026-11-30T12:00:00Z"},
				"subscription": "projects/p/subscriptions/s",
			})
			req, _ = http.NewRequest("POST", base+"/IngestPubSub", bytes.NewReader(body))
			for k, v := range map[string]string{"Content-Type": "application/json", "ce-id": id, "ce-specversion": "1.0",
				"ce-type": function.MessagePublishedType, "ce-source": "//pubsub.googleapis.com/projects/p/topics/t"} {
				req.Header.Set(k, v)
			}
		case "key":
			req, _ = http.NewRequest("POST", base+"/messages", bytes.NewReader([]byte(fmt.Sprintf(`{"content":"keyed %d"}`, j.n))))
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set("Idempotency-Key", fmt.Sprintf("shared-%d", j.n))
		default:
			req, _ = http.NewRequest("POST", base+"/messages", bytes.NewReader([]byte(fmt.Sprintf(`{"content":"own %d-%d"}`, p, j.n))))
			req.Header.Set("Content-Type", "application/json")
		}
		for attempt := 0; ; attempt++ {
			resp, err := client.Do(req)
			status := 0
			if err == nil {
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				status = resp.StatusCode
			}
			if err == nil && status/100 == 2 {
				return
			}
			if j.kind == "own" {
				ownFailures.Add(1)
				report("process %d, a row that conflicts with nothing (%d): %d %v", p, j.n, status, err)
				return
			}
			// A shared key may be retried, as Pub/Sub and clients do.
			sharedRetries.Add(1)
			if attempt >= 5 || (err == nil && status/100 != 5) {
				report("process %d, %s %d: %d %v after %d attempts", p, j.kind, j.n, status, err, attempt+1)
				return
			}
			time.Sleep(100 * time.Millisecond)
			req.Body, _ = req.GetBody()
		}
	}
	start := time.Now()
	for lo := 0; lo < len(jobs); lo += block {
		hi := min(lo+block, len(jobs))
		var wg sync.WaitGroup
		for p, s := range procs {
			queue := make(chan job)
			go func() {
				for i := lo; i < hi; i++ {
					k := i
					if p == 1 {
						k = lo + hi - 1 - i
					}
					queue <- jobs[k]
				}
				close(queue)
			}()
			for range concurrency {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for j := range queue {
						send(p, s.base, j)
					}
				}()
			}
		}
		wg.Wait()
	}
	elapsed := time.Since(start)
	close(errs)
	for e := range errs {
		t.Error(e)
	}
	if n := ownFailures.Load(); n != 0 {
		t.Errorf("%d rows that conflicted with nothing failed", n)
	}
	deadlocks := psQueryInt(t, url, "SELECT deadlocks::int FROM pg_stat_database WHERE datname = current_database()") - deadlocksBefore
	if deadlocks != 0 {
		t.Errorf("PostgreSQL reported %d deadlocks", deadlocks)
	}
	for _, prefix := range []string{"event", "keyed"} {
		distinct := psQueryInt(t, url, "SELECT count(DISTINCT content)::int FROM messages WHERE content LIKE $1", prefix+" %")
		total := psQueryInt(t, url, "SELECT count(*)::int FROM messages WHERE content LIKE $1", prefix+" %")
		if distinct != keys || total != keys {
			t.Errorf("%s: %d rows with %d distinct contents, want each of %d shared keys stored exactly once", prefix, total, distinct, keys)
		}
	}
	own := psQueryInt(t, url, "SELECT count(*)::int FROM messages WHERE content LIKE 'own %'")
	if want := 2 * ((keys + 1) / 2); own != want {
		t.Errorf("%d rows of their own, want %d", own, want)
	}
	t.Logf("%d requests in %v; %d retries of shared keys; %d deadlocks", 2*len(jobs), elapsed.Round(time.Millisecond), sharedRetries.Load(), deadlocks)
}
