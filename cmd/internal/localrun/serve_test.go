package localrun

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"example.com/pscmessages/store/migrations"
)

// startServeChild starts `go run ./cmd/pscmessages` without the Pub/Sub side (runServe,
// in a child process) on PORT port with env and returns at once; its ready
// channel is closed when it prints its "serving" line.
func startServeChild(t testing.TB, port string, env map[string]string) *runner {
	t.Helper()
	return startRunner(t, runnerOptions{port: port, host: "127.0.0.1", env: env,
		unset: []string{"PUBSUB_*"}})
}

func serveDatabase(t testing.TB) string {
	t.Helper()
	c, db := sharedDatabase(t, "serve")
	return c.SuperuserURL(db)
}

// takenPort holds a loopback port that accepts connections, as whatever
// holds a port would, until the test ends.
func takenPort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	return fmt.Sprint(l.Addr().(*net.TCPAddr).Port)
}

// TestServePortTaken: a taken port fails at once, naming the address, and
// nothing claims to be serving: a port that answers is not proof that this
// process listens on it.
func TestServePortTaken(t *testing.T) {
	port := takenPort(t)
	// No database: the port is checked before one would be started.
	s := startServeChild(t, port, map[string]string{"DATABASE_URL": "postgres://nobody@127.0.0.1:1/none"})
	select {
	case <-s.exited:
	case <-time.After(30 * time.Second):
		t.Fatal("serve did not exit within 30 s with its port taken")
	}
	if s.cmd.ProcessState.Success() {
		t.Fatal("serve exited 0 with its port taken")
	}
	if out := s.stdout.String(); strings.Contains(out, "serving") {
		t.Fatalf("serve claimed to be serving on a taken port:\n%s", out)
	}
	if e := s.stderr.String(); !strings.Contains(e, "address already in use") || !strings.Contains(e, port) {
		t.Fatalf("stderr does not say the port is taken:\n%s", e)
	}
}

// TestServeDrainsOnSIGTERM: under load, SIGTERM lets every request
// the server accepted finish; clients see answers or a refused connection,
// never a connection cut mid-request, and the process exits 0.
func TestServeDrainsOnSIGTERM(t *testing.T) {
	url := serveDatabase(t)
	s := startServeChild(t, psFreePort(t), map[string]string{"DATABASE_URL": url})
	select {
	case <-s.ready:
	case <-s.exited:
		t.Fatal("serve exited early")
	case <-time.After(60 * time.Second):
		t.Fatal("serve did not start in 60 s")
	}
	// Slow requests: headers sent, body finished only after SIGTERM. Their
	// handlers are running when the signal arrives, so a drain must wait
	// for them.
	const slow = 8
	slowErrs := make(chan error, slow)
	release := make(chan struct{})
	for i := range slow {
		go func() {
			pr, pw := io.Pipe()
			body := fmt.Sprintf(`{"content": "slow %d"}`, i)
			req, _ := http.NewRequest("POST", s.base+"/messages", pr)
			req.ContentLength = int64(len(body))
			req.Header.Set("Content-Type", "application/json")
			go func() {
				pw.Write([]byte(body[:5]))
				<-release
				pw.Write([]byte(body[5:]))
				pw.Close()
			}()
			resp, err := http.DefaultClient.Do(req)
			if err == nil {
				resp.Body.Close()
				if resp.StatusCode != http.StatusCreated {
					err = fmt.Errorf("status %d", resp.StatusCode)
				}
			}
			slowErrs <- err
		}()
	}
	// Load: keep-alive clients posting as fast as they can. Each request
	// has an Idempotency-Key, which lets net/http retry one sent on a
	// keep-alive connection the server closed as idle (a race of HTTP/1.1
	// itself, not a dropped request).
	var (
		ok, refused atomic.Int64
		cut         = make(chan error, 1000)
		wg          sync.WaitGroup
		stop        atomic.Bool
	)
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 32}, Timeout: 60 * time.Second}
	for w := range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; !stop.Load(); i++ {
				body := fmt.Sprintf(`{"content": "load %d-%d"}`, w, i)
				req, _ := http.NewRequest("POST", s.base+"/messages", strings.NewReader(body))
				req.Header.Set("Content-Type", "application/json")
				req.Header.Set("Idempotency-Key", fmt.Sprintf("load-%d-%d", w, i))
				resp, err := client.Do(req)
				switch {
				case err == nil:
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode == http.StatusCreated {
						ok.Add(1)
					} else {
						cut <- fmt.Errorf("load %d-%d: status %d", w, i, resp.StatusCode)
					}
				case isDialError(err):
					refused.Add(1)
					return // the listener is closed: never accepted
				default:
					cut <- fmt.Errorf("load %d-%d: %w", w, i, err)
					return
				}
			}
		}()
	}
	time.Sleep(1500 * time.Millisecond)
	s.cmd.Process.Signal(syscall.SIGTERM)
	time.Sleep(500 * time.Millisecond)
	close(release)
	for range slow {
		if err := <-slowErrs; err != nil {
			t.Errorf("a request in flight at SIGTERM was not answered: %v", err)
		}
	}
	select {
	case <-s.exited:
	case <-time.After(60 * time.Second):
		t.Fatal("serve did not exit within 60 s of SIGTERM")
	}
	stop.Store(true)
	wg.Wait()
	close(cut)
	for err := range cut {
		t.Errorf("cut: %v", err)
	}
	if !s.cmd.ProcessState.Success() {
		t.Errorf("serve exited with %v after SIGTERM, want 0", s.cmd.ProcessState)
	}
	stored := psQueryInt(t, url, "SELECT count(*) FROM messages WHERE content LIKE 'load %'")
	if int64(stored) < ok.Load() || ok.Load() == 0 {
		t.Errorf("%d load requests answered 201, %d rows stored", ok.Load(), stored)
	}
	if n := psQueryInt(t, url, "SELECT count(*) FROM messages WHERE content LIKE 'slow %'"); n != slow {
		t.Errorf("%d of %d slow requests stored", n, slow)
	}
	t.Logf("%d answered, %d refused after the listener closed", ok.Load(), refused.Load())
}

// TestServeTimeouts: clients that trickle their headers or body are cut by
// the server's timeouts instead of holding a connection forever.
func TestServeTimeouts(t *testing.T) {
	url := serveDatabase(t)
	s := startServeChild(t, psFreePort(t), map[string]string{"DATABASE_URL": url})
	select {
	case <-s.ready:
	case <-s.exited:
		t.Fatal("serve exited early")
	case <-time.After(60 * time.Second):
		t.Fatal("serve did not start in 60 s")
	}
	addr := strings.TrimPrefix(s.base, "http://")
	cases := map[string]struct {
		head  string // sent at once
		drip  string // then one byte a second
		limit time.Duration
	}{
		"headers": {"POST /messages HTTP/1.1\r\nHost: x\r\n", strings.Repeat("X-Slow: 1\r\n", 100), readHeaderTimeout},
		"body":    {"POST /messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n", strings.Repeat("x", 1000), readTimeout},
	}
	var wg sync.WaitGroup
	for name, tc := range cases {
		for i := range 5 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c, err := net.Dial("tcp", addr)
				if err != nil {
					t.Error(err)
					return
				}
				defer c.Close()
				start := time.Now()
				c.Write([]byte(tc.head))
				closed := make(chan struct{})
				go func() { // the server closes the connection (after an answer, maybe)
					io.Copy(io.Discard, c)
					close(closed)
				}()
				for j := 0; j < len(tc.drip); j++ {
					select {
					case <-closed:
						if d := time.Since(start); d > tc.limit+5*time.Second {
							t.Errorf("%s %d: cut after %v, want about %v", name, i, d, tc.limit)
						}
						return
					case <-time.After(time.Second):
					}
					if _, err := c.Write([]byte{tc.drip[j]}); err != nil {
						return // cut
					}
					if time.Since(start) > tc.limit+10*time.Second {
						t.Errorf("%s %d: a client trickling 1 byte/s still connected after %v", name, i, time.Since(start))
						return
					}
				}
			}()
		}
	}
	wg.Wait()
}

// isDialError is a connection the server never accepted: refused, or reset
// while it waited in the closed listener's backlog.
func isDialError(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

// TestLocalServerCutsAClientThatNeverReads: the local server has a write
// timeout, longer than the longest legitimate request (its body, a cold
// pool open and a query), and a client that never reads its answer is cut
// when it expires, releasing the handler. Without one, such a client held
// its connection and goroutine for ever.
func TestLocalServerCutsAClientThatNeverReads(t *testing.T) {
	released := make(chan error, 1)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		chunk := bytes.Repeat([]byte("x"), 64<<10)
		for {
			if _, err := w.Write(chunk); err != nil {
				released <- err
				return
			}
		}
	})
	srv := newLocalServer(h)
	if srv.WriteTimeout <= 0 {
		t.Fatal("the local server has no write timeout: a client that never reads holds a connection for ever")
	}
	if longest := srv.ReadTimeout + shutdownTimeout; srv.WriteTimeout <= longest {
		t.Fatalf("write timeout %v would cut a legitimate request (up to %v)", srv.WriteTimeout, longest)
	}
	// The same server with the timeout shortened, so the test takes a moment.
	srv.WriteTimeout = 300 * time.Millisecond
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	defer srv.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.(*net.TCPConn).SetReadBuffer(4 << 10)
	c.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n")) // and never read
	select {
	case <-released:
	case <-time.After(30 * time.Second):
		t.Fatal("the handler still writes to a client that never reads, 30 s on")
	}
}

// TestServeNamesTheDatabaseItWillMigrate: pointed at an existing database,
// the runner says at start, in one line without credentials, which database
// it is and which migrations the first request will apply there. It used
// to create its tables there silently.
func TestServeNamesTheDatabaseItWillMigrate(t *testing.T) {
	const secret = "s3cret-pw"
	c, db := sharedDatabase(t, "existing")
	url := c.URL("postgres", secret, db) // trust: the password is only carried
	names, err := migrations.Names()
	if err != nil {
		t.Fatal(err)
	}
	where := fmt.Sprintf(`database %q on 127.0.0.1:%d: `, db, c.Port())
	for i, want := range []string{
		where + "no schema of ours yet; the functions' first request creates their tables there with migrations " + strings.Join(names, ", ") + " (DB_MIGRATE=false turns that off)",
		where + fmt.Sprintf("schema at version %d, no migrations to apply", len(names)),
	} {
		s := startServeChild(t, psFreePort(t), map[string]string{"DATABASE_URL": url})
		select {
		case <-s.ready:
		case <-s.exited:
			t.Fatalf("serve exited early:\n%s", s.stderr.String())
		case <-time.After(60 * time.Second):
			t.Fatal("serve did not start in 60 s")
		}
		out := s.stdout.String()
		if !strings.Contains(out, want+"\n") {
			t.Fatalf("run %d: stdout does not say %q:\n%s", i+1, want, out)
		}
		if n := strings.Count("\n"+out, "\ndatabase "); n != 1 {
			t.Errorf("run %d: %d lines about the database, want 1:\n%s", i+1, n, out)
		}
		if strings.Contains(out+s.stderr.String(), secret) {
			t.Fatalf("run %d: the output shows the password:\n%s", i+1, out)
		}
		if i == 0 { // the first request applies them
			resp, err := http.Post(s.base+"/", "application/json", strings.NewReader(`{"content": "hello"}`))
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != 200 {
				t.Fatalf("POST: %d", resp.StatusCode)
			}
		}
		s.stop(t)
	}
}

// TestServeSaysWhetherTheDatabaseRefusesOrIsUnreachable: the start line
// about a database it cannot read tells a server that refuses the
// connection (a login, a database that does not exist) from one that is not
// there, since the fix differs.
func TestServeSaysWhetherTheDatabaseRefusesOrIsUnreachable(t *testing.T) {
	for _, tt := range []struct{ name, url, want string }{
		{"refused", shared.URL("postgres", "", "no_such_database"), "(refuses the connection now; "},
		{"unreachable", "postgres://postgres@127.0.0.1:1/d?sslmode=disable&connect_timeout=2", "(not reachable now; "},
	} {
		t.Run(tt.name, func(t *testing.T) {
			env := map[string]string{"DATABASE_URL": tt.url}
			line := describeDatabase(t.Context(), func(k string) string { return env[k] })
			if !strings.Contains(line, tt.want) {
				t.Fatalf("start line %q; want it to say %q", line, tt.want)
			}
		})
	}
}
