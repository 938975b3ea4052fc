package main

// `go run ./cmd/pscbench rss`: the peak resident memory of the local runner (the
// functions as deployed, in their own process) under the two loads of issue 8
// that used to exhaust it: 20 concurrent 10 MB Pub/Sub messages, and 20
// concurrent GET /?limit=1000 over rows of 64 KB. Each load runs against a
// fresh process, and the peak is that process's VmHWM from /proc. It measures
// memory, not time, so a shared machine changes little; the method is in
// cmd/pscbench/BENCHMARKS.md.

import (
	"bytes"
	"cmp"
	"context"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"

	function "example.com/pscmessages"
	"example.com/pscmessages/store/localpg"
)

type rssConfig struct {
	concurrency int
	eventBytes  int
	rows        int
	rowBytes    int
	limit       int
	runs        int
	runner      string   // a prebuilt runner; "" builds ./cmd/pscmessages
	env         []string // extra environment of the runner, NAME=value
	loads       []string // which loads: events, gets, posts, idle; nil: all

	posts     int           // concurrent POSTs of the posts load
	postBytes int           // body bytes of each of them
	idle      int           // idle senders of the idle load
	validC    int           // concurrency of the valid deliveries beside them
	window    time.Duration // how long the valid deliveries run
}

// has reports whether load is selected.
func (c rssConfig) has(load string) bool { return len(c.loads) == 0 || slices.Contains(c.loads, load) }

func runBenchRSS(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("rss", flag.ContinueOnError)
	var cfg rssConfig
	fs.IntVar(&cfg.concurrency, "c", 20, "concurrent requests of each load (`n`)")
	fs.IntVar(&cfg.eventBytes, "event-bytes", 10<<20, "data `bytes` of each Pub/Sub message")
	fs.IntVar(&cfg.rows, "rows", 1000, "`rows` in the table the GETs read")
	fs.IntVar(&cfg.rowBytes, "row-bytes", 64<<10, "content `bytes` of each row")
	fs.IntVar(&cfg.limit, "limit", 1000, "?limit= of each GET (`n`)")
	fs.IntVar(&cfg.runs, "runs", 3, "fresh processes measured per load (`n`)")
	fs.StringVar(&cfg.runner, "runner", "", "a runner `binary` built from another commit (go build -o fn ./cmd/pscmessages), to compare; default: build this one")
	env := fs.String("env", "", "comma-separated NAME=value pairs for the runner, e.g. GOMEMLIMIT=150MiB")
	loads := fs.String("loads", "events,gets,posts,idle", "comma-separated `loads` to run: events, gets, posts (concurrent large POST bodies), idle (idle senders beside valid deliveries)")
	fs.IntVar(&cfg.posts, "posts", 1000, "concurrent POSTs of the posts load (`n`)")
	fs.IntVar(&cfg.postBytes, "post-bytes", 256<<10, "body `bytes` of each POST of the posts load")
	fs.IntVar(&cfg.idle, "idle", 80, "idle senders of the idle load (`n`): each declares a body just within the delivery limit and sends nothing")
	fs.IntVar(&cfg.validC, "valid-c", 8, "concurrency of the valid deliveries beside the idle senders (`n`)")
	fs.DurationVar(&cfg.window, "window", 10*time.Second, "how long the valid deliveries of the idle load run")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: go run ./cmd/pscbench rss [flags]\n\n"+
			"Builds the local runner, starts a throwaway PostgreSQL, and reports the runner's peak RSS\n"+
			"(VmHWM) under concurrent 10 MB Pub/Sub deliveries, concurrent large GETs, concurrent large\n"+
			"POST bodies, and idle senders beside valid deliveries.\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if *env != "" {
		cfg.env = strings.Split(*env, ",")
	}
	cfg.loads = strings.Split(*loads, ",")
	if cfg.concurrency < 1 || cfg.runs < 1 || cfg.rows < 1 || cfg.limit < 1 || cfg.rowBytes < 1 || cfg.eventBytes < 1 {
		return errors.New("every flag must be at least 1")
	}
	return benchRSS(ctx, cfg, os.Stdout)
}

func benchRSS(ctx context.Context, cfg rssConfig, out io.Writer) error {
	say := func(format string, args ...any) { fmt.Fprintf(os.Stderr, "bench-rss: "+format+"\n", args...) }
	say("building the runner")
	dir, err := os.MkdirTemp("", "bench-rss-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	bin := cfg.runner
	if bin == "" {
		if bin, err = buildRunner(ctx, dir); err != nil {
			return err
		}
	}
	say("starting a throwaway PostgreSQL")
	cluster, err := localpg.Start(ctx, localpg.Options{})
	if err != nil {
		return err
	}
	defer cluster.Destroy()
	if err := cluster.CreateDatabase(ctx, benchDB); err != nil {
		return err
	}
	dbURL := cluster.SuperuserURL(benchDB)

	type result struct {
		name      string
		idleKB    []int64
		peakKB    []int64
		outcome   string
		wireBytes int64
	}
	var results []result
	measure := func(name string, prepare func() error, load rssLoad) error {
		r := result{name: name}
		for run := range cfg.runs {
			say("%s, run %d of %d", name, run+1, cfg.runs)
			idle, peak, counts, n, err := rssRun(ctx, bin, dbURL, cfg, prepare, load)
			if err != nil {
				return err
			}
			r.idleKB, r.peakKB = append(r.idleKB, idle), append(r.peakKB, peak)
			r.outcome, r.wireBytes = counts, n
		}
		results = append(results, r)
		return nil
	}

	// Concurrent oversized Pub/Sub deliveries, binary mode as Eventarc
	// sends them. Each is too large to decode, streamed past and answered
	// 500 (left to Pub/Sub, which keeps it whole).
	if cfg.has("events") {
		data := []byte(base64.StdEncoding.EncodeToString(bytes.Repeat([]byte("x"), cfg.eventBytes)))
		err := measure(fmt.Sprintf("%d concurrent %d MB Pub/Sub messages", cfg.concurrency, cfg.eventBytes>>20), nil,
			concurrentLoad(ctx, cfg.concurrency, func(base string, i int) (*http.Request, error) {
				// One copy of the data serves every request; each has its own id.
				id := fmt.Sprintf("rss-%d-%d", time.Now().UnixNano(), i)
				head := `{"message":{"messageId":"` + id + `","data":"`
				const tail = `"},"subscription":"projects/bench/subscriptions/s"}`
				body := io.MultiReader(strings.NewReader(head), bytes.NewReader(data), strings.NewReader(tail))
				req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+"/IngestPubSub", body)
				if err != nil {
					return nil, err
				}
				req.ContentLength = int64(len(head) + len(data) + len(tail))
				setDeliveryHeaders(req, id)
				return req, nil
			}))
		if err != nil {
			return err
		}
	}

	// Concurrent GETs of large pages.
	if cfg.has("gets") {
		conn, err := pgx.Connect(ctx, dbURL)
		if err != nil {
			return err
		}
		defer conn.Close(context.Background())
		fill := func() error {
			var n int
			if err := conn.QueryRow(ctx, "SELECT count(*) FROM messages WHERE length(content) = $1", cfg.rowBytes).Scan(&n); err != nil {
				return err
			}
			if n >= cfg.rows {
				return nil
			}
			_, err := conn.Exec(ctx, "INSERT INTO messages (content) SELECT repeat(chr(97 + g % 26), $1) FROM generate_series(1, $2) g", cfg.rowBytes, cfg.rows-n)
			return err
		}
		err = measure(fmt.Sprintf("%d concurrent GET /?limit=%d over %d KB rows", cfg.concurrency, cfg.limit, cfg.rowBytes>>10), fill,
			concurrentLoad(ctx, cfg.concurrency, func(base string, i int) (*http.Request, error) {
				return http.NewRequestWithContext(ctx, http.MethodGet, base+"/?limit="+strconv.Itoa(cfg.limit), nil)
			}))
		if err != nil {
			return err
		}
	}

	// Concurrent large POST bodies, all sent at once, so that they wait for
	// the pool together holding their bodies: each of post-bytes, its
	// content written as JSON escapes (\u0041), as large a body as
	// MAX_BODY_BYTES allows for a content of a sixth of it.
	if cfg.has("posts") {
		body := []byte(`{"content":"` + strings.Repeat(`\u0041`, max(1, (cfg.postBytes-14)/6)) + `"}`)
		err := measure(fmt.Sprintf("%d concurrent POSTs of %d KB bodies", cfg.posts, cfg.postBytes>>10), nil,
			concurrentLoad(ctx, cfg.posts, func(base string, i int) (*http.Request, error) {
				req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+"/", bytes.NewReader(body))
				if err == nil {
					req.Header.Set("Content-Type", "application/json")
				}
				return req, err
			}))
		if err != nil {
			return err
		}
	}

	// Idle senders beside valid traffic: connections that declare a
	// delivery just within the delivery limit and send nothing, then valid
	// small deliveries in a closed loop for the window.
	if cfg.has("idle") {
		err := measure(fmt.Sprintf("%d idle senders beside %d valid deliveries at a time for %s", cfg.idle, cfg.validC, cfg.window), nil,
			idleLoad(ctx, cfg))
		if err != nil {
			return err
		}
	}

	fmt.Fprintf(out, "\npeak RSS (VmHWM) of the runner %s, one fresh process per run; env %q\n\n", cmp.Or(cfg.runner, "(this commit)"), cfg.env)
	fmt.Fprintln(out, "| load | answers (last run) | bytes answered per request | RSS before load MiB | peak RSS MiB per run |")
	fmt.Fprintln(out, "|---|---|---:|---:|---|")
	for _, r := range results {
		peaks := make([]string, len(r.peakKB))
		for i, p := range r.peakKB {
			peaks[i] = fmtMiB(p)
		}
		fmt.Fprintf(out, "| %s | %s | %d | %s | %s |\n", r.name, r.outcome, r.wireBytes, fmtMiB(r.idleKB[0]), strings.Join(peaks, ", "))
	}
	return nil
}

// setDeliveryHeaders makes req a binary-mode messagePublished CloudEvent.
func setDeliveryHeaders(req *http.Request, id string) {
	for k, v := range map[string]string{"Content-Type": "application/json", "ce-id": id, "ce-specversion": "1.0",
		"ce-type": function.MessagePublishedType, "ce-source": "//pubsub.googleapis.com/projects/bench/topics/t"} {
		req.Header.Set(k, v)
	}
}

// rssLoad runs one load against the runner at base and describes its
// answers: a count per status, and the bytes of an answer.
type rssLoad func(base string) (outcome string, perRequest int64, err error)

// rssRun starts the runner, opens its pool with one request, calls prepare
// (if any), runs load and reads the process's VmHWM once it is done.
func rssRun(ctx context.Context, bin, dbURL string, cfg rssConfig, prepare func() error, load rssLoad) (idleKB, peakKB int64, outcome string, perRequest int64, err error) {
	port, err := freeLoopbackPort()
	if err != nil {
		return
	}
	base := "http://127.0.0.1:" + strconv.Itoa(port)
	cmd := exec.Command(bin)
	cmd.Env = append(withoutEnv("PORT="), append([]string{"DATABASE_URL=" + dbURL, "HOST=127.0.0.1", "PORT=" + strconv.Itoa(port)}, cfg.env...)...)
	var logs bytes.Buffer
	cmd.Stdout, cmd.Stderr = io.Discard, &logs
	if err = cmd.Start(); err != nil {
		return
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer stopProcess(cmd, exited)
	get := loadRequest{method: http.MethodGet, url: base + "/?limit=1"}
	for deadline := time.Now().Add(30 * time.Second); ; {
		if err = get.do(ctx, http.DefaultClient); err == nil {
			break
		}
		if time.Now().After(deadline) {
			err = fmt.Errorf("the runner did not answer within 30 s: %w\n%s", err, logs.String())
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	if prepare != nil {
		if err = prepare(); err != nil {
			return
		}
	}
	pid := cmd.Process.Pid
	if idleKB, err = procStatusKB(pid, "VmHWM:"); err != nil {
		return
	}
	if outcome, perRequest, err = load(base); err != nil {
		return
	}
	peakKB, err = procStatusKB(pid, "VmHWM:")
	return
}

// statusCounts counts answers by status, safe for concurrent use.
type statusCounts struct {
	mu sync.Mutex
	n  map[int]int
}

func (c *statusCounts) add(status int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n == nil {
		c.n = map[int]int{}
	}
	c.n[status]++
}

func (c *statusCounts) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	codes := slices.Sorted(maps.Keys(c.n))
	parts := make([]string, len(codes))
	for i, code := range codes {
		parts[i] = fmt.Sprintf("%d× %d", c.n[code], code)
	}
	return strings.Join(parts, ", ")
}

// concurrentLoad sends n requests from newReq at once, each on its own
// connection, and waits for every answer.
func concurrentLoad(ctx context.Context, n int, newReq func(base string, i int) (*http.Request, error)) rssLoad {
	return func(base string) (string, int64, error) {
		client := &http.Client{Timeout: 5 * time.Minute, Transport: &http.Transport{MaxIdleConnsPerHost: n}}
		defer client.CloseIdleConnections()
		var (
			statuses   statusCounts
			mu         sync.Mutex
			perRequest int64
			wg         sync.WaitGroup
			errs       []error
		)
		start := make(chan struct{})
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				req, err := newReq(base, i)
				if err == nil {
					<-start
					var resp *http.Response
					if resp, err = client.Do(req); err == nil {
						var got int64
						got, err = io.Copy(io.Discard, resp.Body)
						resp.Body.Close()
						statuses.add(resp.StatusCode)
						mu.Lock()
						perRequest = got
						mu.Unlock()
					}
				}
				if err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
				}
			}()
		}
		close(start)
		wg.Wait()
		if len(errs) > 0 {
			return "", 0, fmt.Errorf("%d requests failed, first: %w", len(errs), errs[0])
		}
		return statuses.String(), perRequest, nil
	}
}

// idleLoad opens cfg.idle connections to IngestPubSub that declare a
// delivery of 600,000 bytes (within the default delivery limit) and send
// nothing, then sends valid small deliveries from cfg.validC workers for
// cfg.window, and reports their answers and rate.
func idleLoad(ctx context.Context, cfg rssConfig) rssLoad {
	return func(base string) (string, int64, error) {
		host := strings.TrimPrefix(base, "http://")
		for range cfg.idle {
			conn, err := net.Dial("tcp", host)
			if err != nil {
				return "", 0, err
			}
			defer conn.Close()
			fmt.Fprintf(conn, "POST /IngestPubSub HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: 600000\r\n"+
				"ce-id: idle\r\nce-specversion: 1.0\r\nce-type: %s\r\nce-source: //pubsub.googleapis.com/projects/bench/topics/idle\r\n\r\n",
				host, function.MessagePublishedType)
		}
		time.Sleep(200 * time.Millisecond) // the idle requests reach the function first
		client := &http.Client{Timeout: time.Minute, Transport: &http.Transport{MaxIdleConnsPerHost: cfg.validC}}
		defer client.CloseIdleConnections()
		var (
			statuses statusCounts
			wg       sync.WaitGroup
			seq      atomic.Int64
			slowest  atomic.Int64
		)
		end := time.Now().Add(cfg.window)
		for range cfg.validC {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for time.Now().Before(end) && ctx.Err() == nil {
					id := fmt.Sprintf("valid-%d-%d", time.Now().UnixNano(), seq.Add(1))
					body := `{"message":{"messageId":"` + id + `","data":"aGVsbG8="},"subscription":"projects/bench/subscriptions/s"}`
					req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+"/IngestPubSub", strings.NewReader(body))
					if err != nil {
						return
					}
					setDeliveryHeaders(req, id)
					start := time.Now()
					resp, err := client.Do(req)
					if err != nil {
						statuses.add(0)
						continue
					}
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					statuses.add(resp.StatusCode)
					if d := int64(time.Since(start)); d > slowest.Load() {
						slowest.Store(d)
					}
				}
			}()
		}
		wg.Wait()
		statuses.mu.Lock()
		ok := statuses.n[http.StatusNoContent]
		statuses.mu.Unlock()
		return fmt.Sprintf("%s; %.0f stored/s, slowest %s", statuses.String(), float64(ok)/cfg.window.Seconds(), time.Duration(slowest.Load()).Round(time.Millisecond)), 0, nil
	}
}

// procStatusKB reads one kB field (VmHWM:, VmRSS:) of /proc/PID/status.
func procStatusKB(pid int, field string) (int64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, err
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, field); ok {
			if f := strings.Fields(v); len(f) > 0 {
				return strconv.ParseInt(f[0], 10, 64)
			}
		}
	}
	return 0, fmt.Errorf("no %s in /proc/%d/status", field, pid)
}
