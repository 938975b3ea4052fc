package main

// `go run ./cmd/pscmessages bench-rss`: the peak resident memory of the local runner (the
// functions as deployed, in their own process) under the two loads that
// could exhaust it: 20 concurrent 10 MB Pub/Sub messages, and 20
// concurrent GET /?limit=1000 over rows of 64 KB. Each load runs against a
// fresh process, and the peak is that process's VmHWM from /proc. It measures
// memory, not time, so a shared machine changes little; the method is in
// cmd/BENCHMARKS.md.

import (
	"bytes"
	"cmp"
	"context"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
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
}

func runBenchRSS(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("bench-rss", flag.ContinueOnError)
	var cfg rssConfig
	fs.IntVar(&cfg.concurrency, "c", 20, "concurrent requests of each load (`n`)")
	fs.IntVar(&cfg.eventBytes, "event-bytes", 10<<20, "data `bytes` of each Pub/Sub message")
	fs.IntVar(&cfg.rows, "rows", 1000, "`rows` in the table the GETs read")
	fs.IntVar(&cfg.rowBytes, "row-bytes", 64<<10, "content `bytes` of each row")
	fs.IntVar(&cfg.limit, "limit", 1000, "?limit= of each GET (`n`)")
	fs.IntVar(&cfg.runs, "runs", 3, "fresh processes measured per load (`n`)")
	fs.StringVar(&cfg.runner, "runner", "", "a runner `binary` built from another commit (go build -o fn ./cmd/pscmessages), to compare; default: build this one")
	env := fs.String("env", "", "comma-separated NAME=value pairs for the runner, e.g. GOMEMLIMIT=150MiB")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: go run ./cmd/pscmessages bench-rss [flags]\n\n"+
			"Builds the local runner, starts a throwaway PostgreSQL, and reports the runner's peak RSS\n"+
			"(VmHWM) under concurrent 10 MB Pub/Sub deliveries and concurrent large GETs.\n\n")
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

	// Load 1: concurrent oversized Pub/Sub deliveries, binary mode as
	// Eventarc sends them. Each is too large to decode, streamed past and
	// answered 500 (left to Pub/Sub, which keeps it whole).
	events := result{name: fmt.Sprintf("%d concurrent %d MB Pub/Sub messages", cfg.concurrency, cfg.eventBytes>>20)}
	data := []byte(base64.StdEncoding.EncodeToString(bytes.Repeat([]byte("x"), cfg.eventBytes)))
	for run := range cfg.runs {
		say("events, run %d of %d", run+1, cfg.runs)
		idle, peak, counts, n, err := rssRun(ctx, bin, dbURL, cfg, func(base string, i int) (*http.Request, error) {
			// One copy of the data serves every request; each has its own id.
			id := fmt.Sprintf("rss-%d-%d-%d", time.Now().UnixNano(), run, i)
			head := `{"message":{"messageId":"` + id + `","data":"`
			const tail = `"},"subscription":"projects/bench/subscriptions/s"}`
			body := io.MultiReader(strings.NewReader(head), bytes.NewReader(data), strings.NewReader(tail))
			req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+"/IngestPubSub", body)
			if err != nil {
				return nil, err
			}
			req.ContentLength = int64(len(head) + len(data) + len(tail))
			for k, v := range map[string]string{"Content-Type": "application/json", "ce-id": id, "ce-specversion": "1.0",
				"ce-type": function.MessagePublishedType, "ce-source": "//pubsub.googleapis.com/projects/bench/topics/t"} {
				req.Header.Set(k, v)
			}
			return req, nil
		}, nil)
		if err != nil {
			return err
		}
		events.idleKB, events.peakKB = append(events.idleKB, idle), append(events.peakKB, peak)
		events.outcome, events.wireBytes = counts, n
	}
	results = append(results, events)

	// Load 2: concurrent GETs of large pages.
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	gets := result{name: fmt.Sprintf("%d concurrent GET /?limit=%d over %d KB rows", cfg.concurrency, cfg.limit, cfg.rowBytes>>10)}
	for run := range cfg.runs {
		say("GETs, run %d of %d", run+1, cfg.runs)
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
		idle, peak, counts, n, err := rssRun(ctx, bin, dbURL, cfg, func(base string, i int) (*http.Request, error) {
			return http.NewRequestWithContext(ctx, http.MethodGet, base+"/?limit="+strconv.Itoa(cfg.limit), nil)
		}, fill)
		if err != nil {
			return err
		}
		gets.idleKB, gets.peakKB = append(gets.idleKB, idle), append(gets.peakKB, peak)
		gets.outcome, gets.wireBytes = counts, n
	}
	results = append(results, gets)

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

// rssRun starts the runner, opens its pool with one request, calls prepare
// (if any), then sends cfg.concurrency requests from newReq at once and
// reads the process's VmHWM once all are answered.
func rssRun(ctx context.Context, bin, dbURL string, cfg rssConfig, newReq func(base string, i int) (*http.Request, error), prepare func() error) (idleKB, peakKB int64, outcome string, perRequest int64, err error) {
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
	client := &http.Client{Timeout: 5 * time.Minute, Transport: &http.Transport{MaxIdleConnsPerHost: cfg.concurrency}}
	defer client.CloseIdleConnections()
	get := loadRequest{method: http.MethodGet, url: base + "/?limit=1"}
	for deadline := time.Now().Add(30 * time.Second); ; {
		if err = get.do(ctx, client); err == nil {
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
	var (
		mu       sync.Mutex
		statuses = map[int]int{}
		wg       sync.WaitGroup
		errs     []error
	)
	start := make(chan struct{})
	for i := range cfg.concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, err := newReq(base, i)
			if err == nil {
				<-start
				var resp *http.Response
				if resp, err = client.Do(req); err == nil {
					var n int64
					n, err = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					mu.Lock()
					statuses[resp.StatusCode]++
					perRequest = n
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
		err = fmt.Errorf("%d requests failed, first: %w", len(errs), errs[0])
		return
	}
	peakKB, err = procStatusKB(pid, "VmHWM:")
	var parts []string
	for code, n := range statuses {
		parts = append(parts, fmt.Sprintf("%d× %d", n, code))
	}
	outcome = strings.Join(parts, ", ")
	return
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
