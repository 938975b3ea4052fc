package function

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"example.com/pscmessages/store/localpg"
	"example.com/pscmessages/store/localpg/localpgtest"
)

// TestDatabaseRestartUnderLoad stops and restarts PostgreSQL under a running
// load: every acknowledged write must be in the table, errors meanwhile must be
// 503s, and the function must recover within seconds by itself.
func TestDatabaseRestartUnderLoad(t *testing.T) {
	ctx := context.Background()
	c := localpgtest.Start(t, localpg.Options{})
	if err := c.CreateDatabase(ctx, "fault"); err != nil {
		t.Fatal(err)
	}
	url := c.SuperuserURL("fault")
	f := newFixture(t, map[string]string{"DATABASE_URL": url, "DB_QUERY_TIMEOUT": "1s", "DB_CONNECT_TIMEOUT": "1s"})
	restartUnderLoad(t, f, "the database", func() error { return c.Stop(ctx) }, func() error { return c.Start(ctx) })
}

// restartUnderLoad runs a POST load of 8 workers, takes the database path
// down with stop for 2 s and brings it back with start. Every answer meanwhile
// must be 200 or 503 with Retry-After, the function must recover within 3 s by
// itself, and every acknowledged write must be in the table.
func restartUnderLoad(t *testing.T, f *fixture, what string, stop, start func() error) {
	t.Helper()
	client := &http.Client{Timeout: 5 * time.Second} // a hang fails the test
	var (
		mu        sync.Mutex
		acked     []string
		n503      int
		restarted atomic.Int64 // unix nanos of the restart
		recovered atomic.Int64 // first success after it
		done      atomic.Bool
		wg        sync.WaitGroup
	)
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; !done.Load(); i++ {
				content := fmt.Sprintf("w%d-%d", w, i)
				resp, err := client.Post(f.srv.URL+"/", "application/json", strings.NewReader(`{"content":"`+content+`"}`))
				if err != nil {
					t.Errorf("request failed (hang or crash): %v", err)
					return
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				mu.Lock()
				switch resp.StatusCode {
				case 200:
					acked = append(acked, content)
					if r := restarted.Load(); r != 0 && recovered.Load() == 0 {
						recovered.Store(time.Now().UnixNano())
					}
				case 503:
					n503++
					if resp.Header.Get("Retry-After") == "" {
						t.Error("503 without Retry-After")
					}
					time.Sleep(50 * time.Millisecond)
				default:
					t.Errorf("status %d while %s was down, want 200 or 503", resp.StatusCode, what)
				}
				mu.Unlock()
			}
		}()
	}
	time.Sleep(time.Second)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second)
	if err := start(); err != nil {
		t.Fatal(err)
	}
	restarted.Store(time.Now().UnixNano())
	time.Sleep(4 * time.Second)
	done.Store(true)
	wg.Wait()

	if n503 == 0 {
		t.Errorf("no 503 while %s was down for 2 s", what)
	}
	if recovered.Load() == 0 {
		t.Fatalf("never recovered after %s restarted", what)
	}
	took := time.Duration(recovered.Load() - restarted.Load())
	if took > 3*time.Second {
		t.Errorf("recovery took %v", took)
	}
	if missing := countRows(t, f.url, "SELECT count(*) FROM unnest($1::text[]) a WHERE NOT EXISTS (SELECT 1 FROM messages WHERE content = a)", acked); missing != 0 {
		t.Fatalf("%d of %d acknowledged writes are missing", missing, len(acked))
	}
	t.Logf("%d acknowledged, %d answered 503, recovered %v after %s restarted", len(acked), n503, took, what)
}

func TestColdStartWhileDatabaseDown(t *testing.T) {
	ctx := context.Background()
	c := localpgtest.Start(t, localpg.Options{})
	url := c.SuperuserURL("postgres")
	if err := c.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	f := newFixture(t, map[string]string{"DATABASE_URL": url, "DB_CONNECT_TIMEOUT": "1s"})
	start := time.Now()
	r := postContent(t, f.srv.URL, "x")
	if r.status != 503 || r.header.Get("Retry-After") == "" || time.Since(start) > 3*time.Second {
		t.Fatalf("cold start with the database down: %d %s after %v", r.status, r.body, time.Since(start))
	}
	// Callers during the backoff get 503 at once instead of another attempt.
	start = time.Now()
	if r := do(t, "GET", f.srv.URL+"/", "", nil); r.status != 503 || time.Since(start) > 500*time.Millisecond {
		t.Fatalf("during backoff: %d after %v", r.status, time.Since(start))
	}
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(15 * time.Second)
	for postContent(t, f.srv.URL, "back").status != 200 {
		if time.Now().After(deadline) {
			t.Fatalf("not recovered; logs: %s", f.logs)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
