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

	"github.com/jackc/pgx/v5"

	"example.com/pscmessages/store/localpg"
)

// TestDatabaseRestartUnderLoad stops and restarts PostgreSQL under a running
// load: every acknowledged write must be in the table, errors meanwhile must be
// 503s, and the function must recover within seconds by itself.
func TestDatabaseRestartUnderLoad(t *testing.T) {
	ctx := context.Background()
	c := localpg.ForTest(t, localpg.Options{})
	if err := c.CreateDatabase(ctx, "fault"); err != nil {
		t.Fatal(err)
	}
	url := c.SuperuserURL("fault")
	f := newFixture(t, map[string]string{"DATABASE_URL": url, "DB_QUERY_TIMEOUT": "1s", "DB_CONNECT_TIMEOUT": "1s"})
	client := &http.Client{Timeout: 5 * time.Second} // a hang fails the test

	var (
		mu        sync.Mutex
		acked     []string
		n503      int
		restarted atomic.Int64 // unix nanos of the restart
		recovered atomic.Int64 // first success after it
		stop      atomic.Bool
		wg        sync.WaitGroup
	)
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; !stop.Load(); i++ {
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
					time.Sleep(50 * time.Millisecond)
				default:
					t.Errorf("status %d during the outage, want 200 or 503", resp.StatusCode)
				}
				mu.Unlock()
			}
		}()
	}
	time.Sleep(time.Second)
	if err := c.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second)
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	restarted.Store(time.Now().UnixNano())
	time.Sleep(4 * time.Second)
	stop.Store(true)
	wg.Wait()

	if n503 == 0 {
		t.Error("no 503 during a 2 s outage")
	}
	if recovered.Load() == 0 {
		t.Fatal("never recovered after the restart")
	}
	took := time.Duration(recovered.Load() - restarted.Load())
	if took > 3*time.Second {
		t.Errorf("recovery took %v", took)
	}
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var missing int
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM unnest($1::text[]) a WHERE NOT EXISTS (SELECT 1 FROM messages WHERE content = a)", acked).Scan(&missing); err != nil {
		t.Fatal(err)
	}
	if missing != 0 {
		t.Fatalf("%d of %d acknowledged writes are missing", missing, len(acked))
	}
	t.Logf("%d acknowledged, %d answered 503, recovered %v after restart", len(acked), n503, took)
}

func TestColdStartWhileDatabaseDown(t *testing.T) {
	ctx := context.Background()
	c := localpg.ForTest(t, localpg.Options{})
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
