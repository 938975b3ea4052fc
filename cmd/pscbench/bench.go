package main

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"

	function "example.com/pscmessages"
	"example.com/pscmessages/store"
	"example.com/pscmessages/store/localpg"
)

// benchDB is the database the benchmark creates in its throwaway cluster.
const benchDB = "bench"

// benchContent is the message every writer sends, the function and pgbench
// alike, so that both insert the same row.
const benchContent = "bench message"

// benchConfig is what the flags of `bench` select.
type benchConfig struct {
	duration time.Duration // measured window of each load phase
	warmup   time.Duration // unmeasured lead-in of each HTTP load phase
	conc     []int         // closed-loop concurrencies for POST, GET and pgbench
	getConc  int           // concurrency of the table-size GET comparison
	bigRows  int           // rows of the large table in that comparison
	maxConns int           // DB_MAX_CONNS for the function; 0 keeps the environment's
	coldRuns int           // process starts to take the median of
	idle     time.Duration // how long the started process idles before its RSS is read
	markdown bool          // also print the tables as Markdown
	client   string        // load generator: "raw" or "net/http"
	procs    int           // GOMAXPROCS of this process while it measures; 0 keeps Go's default
	profile  string        // CPU profile file prefix for the POST phases; empty for none
	progress io.Writer     // where phase names go while the benchmark runs
}

// runBench measures the function beside pgbench on a throwaway durable
// cluster and prints the results as tables.
func runBench(ctx context.Context, args []string) error {
	cfg, err := parseBenchFlags(args)
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	if err != nil {
		return err
	}
	cfg.progress = os.Stderr
	rep, err := bench(ctx, cfg)
	if err != nil {
		return err
	}
	rep.write(os.Stdout, cfg.markdown)
	return nil
}

func parseBenchFlags(args []string) (benchConfig, error) {
	fs := flag.NewFlagSet("throughput", flag.ContinueOnError)
	cfg := benchConfig{}
	fs.DurationVar(&cfg.duration, "duration", 5*time.Second, "measured `time` of each load phase (pgbench rounds it up to whole seconds)")
	fs.DurationVar(&cfg.warmup, "warmup", time.Second, "unmeasured `time` before each HTTP load phase")
	concs := fs.String("c", "1,8,32", "comma-separated closed-loop `concurrencies`")
	fs.IntVar(&cfg.getConc, "get-c", 8, "`concurrency` of the GET-versus-table-size comparison")
	fs.IntVar(&cfg.bigRows, "rows", 1_000_000, "`rows` in the large table of the GET comparison")
	fs.IntVar(&cfg.maxConns, "db-max-conns", 0, "DB_MAX_CONNS for the function (`n`); 0 keeps the environment's or the default")
	fs.IntVar(&cfg.coldRuns, "cold-runs", 5, "process starts measured for time-to-first-200 (`n`, 0 skips)")
	fs.DurationVar(&cfg.idle, "idle", 2*time.Second, "idle `time` before reading the started process's RSS")
	fs.BoolVar(&cfg.markdown, "markdown", false, "also print the tables as Markdown")
	fs.StringVar(&cfg.client, "client", "raw", "load generator: `raw` (one goroutine and one kept-alive connection per worker) or net/http")
	fs.IntVar(&cfg.procs, "gomaxprocs", 1, "GOMAXPROCS of the bench process, function and load generator together (`n`); 1 leaves PostgreSQL a core of its own, 0 keeps Go's default")
	fs.StringVar(&cfg.profile, "cpuprofile", "", "write a CPU profile of this process during each POST phase to `prefix`-post-cN.pprof")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: go run ./cmd/pscbench throughput [flags]\n\n"+
			"Starts a throwaway durable PostgreSQL, serves the Messages function on loopback, loads\n"+
			"POST / and GET / in a closed loop and runs pgbench with the same INSERT beside it.\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return cfg, err
	}
	if fs.NArg() > 0 {
		return cfg, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	for f := range strings.SplitSeq(*concs, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 || n > 1000 {
			return cfg, fmt.Errorf("-c: %q is not a concurrency from 1 to 1000", f)
		}
		cfg.conc = append(cfg.conc, n)
	}
	switch {
	case cfg.client != "raw" && cfg.client != "net/http":
		return cfg, fmt.Errorf("-client: %q is neither raw nor net/http", cfg.client)
	case cfg.duration <= 0 || cfg.warmup < 0 || cfg.idle < 0:
		return cfg, errors.New("-duration must be positive, -warmup and -idle not negative")
	case cfg.getConc < 1 || cfg.bigRows < 100 || cfg.coldRuns < 0 || cfg.maxConns < 0 || cfg.procs < 0:
		return cfg, errors.New("-get-c must be at least 1, -rows at least 100, -cold-runs, -db-max-conns and -gomaxprocs not negative")
	}
	return cfg, nil
}

// ---- the run ----

// bench runs every phase against one cluster and returns what it measured.
func bench(ctx context.Context, cfg benchConfig) (*benchReport, error) {
	if cfg.progress == nil {
		cfg.progress = io.Discard
	}
	// On Cloud Run the function has CPUs of its own and the database is
	// another machine; here all three share the cores. One P keeps the
	// function and its load generator from taking the database's core.
	if cfg.procs > 0 {
		defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(cfg.procs))
	}
	rep := &benchReport{cfg: cfg, machine: describeMachine()}
	binDir, err := localpg.FindBinDir()
	if err != nil {
		return nil, err
	}
	r := &benchRun{cfg: cfg}
	r.say("starting a durable PostgreSQL cluster")
	cluster, err := localpg.Start(ctx, localpg.Options{Durable: true, BinDir: binDir})
	if err != nil {
		return nil, err
	}
	defer func() {
		if err := cluster.Destroy(); err != nil {
			r.say("destroying the cluster: %v", err)
		}
	}()
	if err := cluster.CreateDatabase(ctx, benchDB); err != nil {
		return nil, err
	}
	dbURL := cluster.SuperuserURL(benchDB)

	// The function's settings, read once: the environment's, with the
	// cluster as its database and -db-max-conns as DB_MAX_CONNS.
	getenv := envWith(os.Getenv, "DATABASE_URL", dbURL)
	var childEnv []string // what the cold-start runners get beyond the environment
	if cfg.maxConns > 0 {
		getenv = envWith(getenv, "DB_MAX_CONNS", strconv.Itoa(cfg.maxConns))
		childEnv = append(childEnv, "DB_MAX_CONNS="+strconv.Itoa(cfg.maxConns))
	}
	rep.machine.maxConns = cmp.Or(getenv("DB_MAX_CONNS"), strconv.Itoa(store.DefaultMaxConns))
	fnCfg, err := function.ConfigFromEnv(getenv)
	if err != nil {
		return nil, fmt.Errorf("invalid configuration: %w", err)
	}

	base, stopServer, err := serveFunction(fnCfg)
	if err != nil {
		return nil, err
	}
	defer stopServer()
	httpClient := newNetHTTPClient(slices.Max(append(cfg.conc, cfg.getConc)))
	defer httpClient.c.CloseIdleConnections()
	r.client = loadClient(rawClient{})
	if cfg.client == "net/http" {
		r.client = httpClient
	}
	r.post = loadRequest{method: http.MethodPost, url: base + "/", body: []byte(`{"content":"` + benchContent + `"}`)}
	r.get = loadRequest{method: http.MethodGet, url: base + "/"}
	// An empty message takes the whole POST path but the database: it is
	// read, decoded and validated, then rejected with 400. Its rate is the
	// ceiling of the HTTP side on this machine, load generator included.
	r.noDB = loadRequest{method: http.MethodPost, url: base + "/", body: []byte(`{"content":""}`), want: http.StatusBadRequest}
	// The first request opens the pool and runs the migrations, which
	// create the table pgbench inserts into.
	if err := r.post.do(ctx, httpClient.c); err != nil {
		return nil, fmt.Errorf("first POST: %w", err)
	}

	if r.admin, err = pgx.Connect(ctx, dbURL); err != nil {
		return nil, err
	}
	defer r.admin.Close(context.Background())
	if err := rep.machine.readServer(ctx, r.admin); err != nil {
		return nil, err
	}
	if r.meter, err = newCPUMeter(cluster.Dir); err != nil {
		return nil, err
	}
	if r.pgbench, err = newPGBench(binDir, cluster.Port()); err != nil {
		return nil, err
	}
	defer os.RemoveAll(r.pgbench.dir)

	for _, c := range cfg.conc {
		row, err := r.atConcurrency(ctx, c)
		if err != nil {
			return nil, err
		}
		rep.load = append(rep.load, row)
	}
	for _, n := range []int{100, cfg.bigRows} {
		row, err := r.getWithRows(ctx, n)
		if err != nil {
			return nil, err
		}
		rep.sizes = append(rep.sizes, row)
	}
	if cfg.coldRuns > 0 {
		r.say("cold starts of the local runner (%d runs)", cfg.coldRuns)
		if rep.cold, err = measureColdStarts(ctx, dbURL, childEnv, cfg.coldRuns, cfg.idle); err != nil {
			return nil, err
		}
	}
	return rep, nil
}

// benchRun is what the load phases share once the cluster and the function
// are up.
type benchRun struct {
	cfg             benchConfig
	client          loadClient
	post, get, noDB loadRequest
	admin           *pgx.Conn // superuser, for looking at and filling the table
	meter           *cpuMeter
	pgbench         *pgbenchTool
}

func (r *benchRun) say(format string, args ...any) {
	fmt.Fprintf(r.cfg.progress, "bench: "+format+"\n", args...)
}

// atConcurrency measures POST /, pgbench, GET / and the no-database POST at
// one concurrency, one after the other so that they do not share the CPU.
func (r *benchRun) atConcurrency(ctx context.Context, c int) (loadRow, error) {
	row := loadRow{c: c}
	r.say("POST / c=%d", c)
	before, err := maxID(ctx, r.admin)
	if err != nil {
		return row, err
	}
	stopProfile, err := r.startProfile(fmt.Sprintf("post-c%d", c))
	if err != nil {
		return row, err
	}
	row.post, row.postCPU = closedLoop(ctx, r.client, r.post, c, r.cfg.warmup, r.cfg.duration, r.meter)
	stopProfile()
	after, err := maxID(ctx, r.admin)
	if err != nil {
		return row, err
	}
	if row.batches, err = rowsPerCommit(ctx, r.admin, before, after); err != nil {
		return row, err
	}

	r.say("pgbench c=%d", c)
	s0 := r.meter.sample()
	if row.pgbench, err = r.pgbench.run(ctx, c, r.cfg.duration); err != nil {
		return row, err
	}
	row.pgbenchCPU = r.meter.since(s0)
	row.pgbenchCPU.pgbench = row.pgbench.cpu

	r.say("GET / c=%d", c)
	row.get, row.getCPU = closedLoop(ctx, r.client, r.get, c, r.cfg.warmup, r.cfg.duration, r.meter)
	r.say("POST / rejected before the database, c=%d", c)
	row.noDB, row.noDBCPU = closedLoop(ctx, r.client, r.noDB, c, r.cfg.warmup, r.cfg.duration, r.meter)
	return row, ctx.Err()
}

// startProfile starts a CPU profile of this process, function and load
// generator together, when -cpuprofile asks for one.
func (r *benchRun) startProfile(phase string) (stop func(), err error) {
	if r.cfg.profile == "" {
		return func() {}, nil
	}
	f, err := os.Create(r.cfg.profile + "-" + phase + ".pprof")
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, err
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}, nil
}

// getWithRows measures GET / with exactly n rows in the table.
func (r *benchRun) getWithRows(ctx context.Context, n int) (sizeRow, error) {
	r.say("GET / c=%d with %d rows", r.cfg.getConc, n)
	if err := fillMessages(ctx, r.admin, n); err != nil {
		return sizeRow{}, err
	}
	res, _ := closedLoop(ctx, r.client, r.get, r.cfg.getConc, r.cfg.warmup, r.cfg.duration, r.meter)
	return sizeRow{rows: n, get: res}, ctx.Err()
}

// serveFunction serves Messages on cfg on a loopback port with plain
// net/http, wrapped as the runner and the functions-framework wrap it. The
// cold-start phase runs the runner itself as a separate process.
func serveFunction(cfg function.Config) (base string, stop func(), err error) {
	fn := function.New(cfg, os.Stdout)
	h, err := fn.Handler("Messages")
	if err != nil {
		return "", nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	stop = func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		fn.Close()
	}
	return "http://" + ln.Addr().String(), stop, nil
}

// maxID is the newest message id, so a phase's rows can be told apart.
func maxID(ctx context.Context, conn *pgx.Conn) (int64, error) {
	var id int64
	err := conn.QueryRow(ctx, "SELECT coalesce(max(id), 0) FROM messages").Scan(&id)
	return id, err
}

// batchSizes describes the group-commit batches of a phase.
type batchSizes struct {
	mean float64
	max  int64
}

// rowsPerCommit measures the group-commit batches of the rows with ids in
// (after, upTo]: each batch is one INSERT in its own transaction, so the rows
// of one batch share one xmin.
func rowsPerCommit(ctx context.Context, conn *pgx.Conn, after, upTo int64) (batchSizes, error) {
	var rows, commits, largest int64
	err := conn.QueryRow(ctx, `SELECT coalesce(sum(n), 0), count(*), coalesce(max(n), 0) FROM (
		SELECT count(*) AS n FROM messages WHERE id > $1 AND id <= $2 GROUP BY xmin::text) AS batches`,
		after, upTo).Scan(&rows, &commits, &largest)
	if err != nil || commits == 0 {
		return batchSizes{}, err
	}
	return batchSizes{mean: float64(rows) / float64(commits), max: largest}, nil
}

// fillMessages leaves exactly n rows in messages, vacuumed and analysed so
// that reads neither set hint bits nor plan on stale statistics.
func fillMessages(ctx context.Context, conn *pgx.Conn, n int) error {
	var have int64
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM messages").Scan(&have); err != nil {
		return err
	}
	if have > int64(n) {
		if _, err := conn.Exec(ctx, "TRUNCATE messages"); err != nil {
			return err
		}
		have = 0
	}
	if _, err := conn.Exec(ctx,
		"INSERT INTO messages (content) SELECT $1 || ' ' || g FROM generate_series(1, $2::bigint) g",
		benchContent, int64(n)-have); err != nil {
		return err
	}
	_, err := conn.Exec(ctx, "VACUUM ANALYZE messages")
	return err
}

// ---- the HTTP load generator ----

// loadRequest is one kind of request the load generator repeats.
type loadRequest struct {
	method string
	url    string
	body   []byte
	want   int // the status that counts as success; 0 means 200
}

// do sends r and reads the whole answer, which must have the wanted status.
func (r loadRequest) do(ctx context.Context, client *http.Client) error {
	var body io.Reader
	if r.body != nil {
		body = bytes.NewReader(r.body)
	}
	req, err := http.NewRequestWithContext(ctx, r.method, r.url, body)
	if err != nil {
		return err
	}
	if r.body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, err = io.Copy(io.Discard, resp.Body)
	if want := r.wantStatus(); resp.StatusCode != want {
		return fmt.Errorf("%s %s: %s, want %d", r.method, r.url, resp.Status, want)
	}
	return err
}

func (r loadRequest) wantStatus() int { return cmp.Or(r.want, http.StatusOK) }

// loadStats summarises the requests that completed in a measured window.
type loadStats struct {
	n        int
	errors   int
	firstErr error
	rate     float64 // successful requests per second
	p50, p99 time.Duration
}

func summariseLoad(samples []time.Duration, window time.Duration) loadStats {
	slices.Sort(samples)
	return loadStats{
		n:    len(samples),
		rate: float64(len(samples)) / window.Seconds(),
		p50:  percentile(samples, 0.50),
		p99:  percentile(samples, 0.99),
	}
}

// percentile is the nearest-rank percentile of sorted samples.
func percentile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(q*float64(len(sorted)))) - 1
	return sorted[max(i, 0)]
}

// closedLoop runs c workers that each send r again as soon as the previous
// answer arrived, for warmup plus d. Only requests that finish inside the
// measured window count, and the CPU meter is read at its edges.
func closedLoop(ctx context.Context, client loadClient, r loadRequest, c int, warmup, d time.Duration, meter *cpuMeter) (loadStats, cpuUsage) {
	start := time.Now()
	from, to := start.Add(warmup), start.Add(warmup+d)
	samples := make([][]time.Duration, c)
	errs := make([]int, c)
	firstErr := make([]error, c)
	var wg sync.WaitGroup
	for w := range c {
		wg.Go(func() {
			send, done, err := client.sender(r)
			if err != nil {
				errs[w], firstErr[w] = 1, err
				return
			}
			defer done()
			for ctx.Err() == nil {
				t0 := time.Now()
				if !t0.Before(to) {
					return
				}
				err := send(ctx)
				t1 := time.Now()
				if t1.Before(from) || t1.After(to) {
					continue
				}
				if err != nil {
					errs[w]++
					if firstErr[w] == nil {
						firstErr[w] = err
					}
					continue
				}
				samples[w] = append(samples[w], t1.Sub(t0))
			}
		})
	}
	var usage cpuUsage
	if sleepUntil(ctx, from) {
		s0 := meter.sample()
		if sleepUntil(ctx, to) {
			usage = meter.since(s0)
		}
	}
	wg.Wait()
	res := summariseLoad(slices.Concat(samples...), d)
	for w := range c {
		res.errors += errs[w]
		if res.firstErr == nil {
			res.firstErr = firstErr[w]
		}
	}
	return res, usage
}

// sleepUntil reports whether t was reached before ctx ended.
func sleepUntil(ctx context.Context, t time.Time) bool {
	timer := time.NewTimer(time.Until(t))
	defer timer.Stop()
	select {
	case <-timer.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// ---- pgbench ----

// pgbenchTool runs PostgreSQL's own client with the function's INSERT: the
// rate a client that does nothing but this statement gets from this server,
// one transaction per row.
type pgbenchTool struct {
	bin  string
	dir  string // holds the script and the per-transaction logs
	port int
}

// pgbenchResult is what one pgbench run reported.
type pgbenchResult struct {
	tps      float64
	n        int
	p50, p99 time.Duration // from the per-transaction log
	avg      time.Duration // pgbench's own "latency average"
	cpu      time.Duration // pgbench's user plus system time
}

func newPGBench(binDir string, port int) (*pgbenchTool, error) {
	bin := filepath.Join(binDir, "pgbench")
	if _, err := os.Stat(bin); err != nil {
		return nil, fmt.Errorf("pgbench next to the server binaries: %w", err)
	}
	dir, err := os.MkdirTemp("", "pgbench-")
	if err != nil {
		return nil, err
	}
	script := "INSERT INTO messages (content) VALUES ('" + benchContent + "');\n"
	if err := os.WriteFile(filepath.Join(dir, "insert.sql"), []byte(script), 0o644); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	return &pgbenchTool{bin: bin, dir: dir, port: port}, nil
}

// run runs c clients on min(c, 2) threads for d rounded up to whole seconds,
// as superuser over TCP like the function.
func (p *pgbenchTool) run(ctx context.Context, c int, d time.Duration) (pgbenchResult, error) {
	secs := max(1, int(math.Ceil(d.Seconds())))
	prefix := filepath.Join(p.dir, "c"+strconv.Itoa(c))
	cmd := exec.CommandContext(ctx, p.bin,
		"-n", "-c", strconv.Itoa(c), "-j", strconv.Itoa(min(c, 2)), "-T", strconv.Itoa(secs),
		"-M", "prepared", "-f", filepath.Join(p.dir, "insert.sql"),
		"-l", "--log-prefix="+prefix,
		"-h", "127.0.0.1", "-p", strconv.Itoa(p.port), "-U", "postgres", benchDB)
	cmd.Dir = p.dir // pgbench writes its logs to relative paths too
	cmd.Env = append(withoutEnv("PG"), "PGSSLMODE=disable", "PGAPPNAME=pgbench")
	var out, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &stderr
	if err := cmd.Run(); err != nil {
		return pgbenchResult{}, fmt.Errorf("pgbench -c %d: %w: %s", c, err, strings.TrimSpace(stderr.String()))
	}
	res, err := parsePGBench(out.String())
	if err != nil {
		return res, fmt.Errorf("pgbench -c %d: %w\n%s", c, err, out.String())
	}
	res.cpu = cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
	logs, _ := filepath.Glob(prefix + ".*")
	lat, err := readPGBenchLogs(logs)
	if err != nil {
		return res, err
	}
	slices.Sort(lat)
	res.p50, res.p99 = percentile(lat, 0.50), percentile(lat, 0.99)
	return res, nil
}

// parsePGBench reads the summary pgbench prints on stdout.
func parsePGBench(out string) (pgbenchResult, error) {
	var res pgbenchResult
	var gotTPS bool
	for line := range strings.Lines(out) {
		line = strings.TrimSpace(line)
		switch {
		case strings.HasPrefix(line, "tps = "):
			f := strings.Fields(line)
			if v, err := strconv.ParseFloat(f[2], 64); err == nil {
				res.tps, gotTPS = v, true
			}
		case strings.HasPrefix(line, "latency average = "):
			f := strings.Fields(line)
			if v, err := strconv.ParseFloat(f[3], 64); err == nil {
				res.avg = time.Duration(v * float64(time.Millisecond))
			}
		case strings.HasPrefix(line, "number of transactions actually processed: "):
			v := strings.TrimPrefix(line, "number of transactions actually processed: ")
			res.n, _ = strconv.Atoi(strings.Fields(v)[0])
		}
	}
	if !gotTPS {
		return res, errors.New("no tps in the output")
	}
	return res, nil
}

// readPGBenchLogs returns the latencies in pgbench's per-transaction logs,
// whose third field is the transaction's time in microseconds.
func readPGBenchLogs(paths []string) ([]time.Duration, error) {
	var lat []time.Duration
	for _, p := range paths {
		f, err := os.Open(p)
		if err != nil {
			return nil, err
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			if len(fields) < 3 {
				continue
			}
			if us, err := strconv.ParseInt(fields[2], 10, 64); err == nil {
				lat = append(lat, time.Duration(us)*time.Microsecond)
			}
		}
		err = sc.Err()
		f.Close()
		if err != nil {
			return nil, err
		}
	}
	return lat, nil
}

// withoutEnv is the environment without the variables starting with prefix.
func withoutEnv(prefix string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, prefix) {
			env = append(env, kv)
		}
	}
	return env
}

// ---- CPU accounting ----

// cpuMeter reads the CPU time used so far by this process (the function and
// the load generator), by the PostgreSQL server (the postmaster, its live
// children and the children it reaped) and by the whole machine. The
// function and the database share the machine's cores, so the split tells
// which side a throughput limit comes from.
type cpuMeter struct {
	postmaster int
}

// cpuSample is one reading of a cpuMeter.
type cpuSample struct {
	at                time.Time
	self, pg          time.Duration
	busy, idle, steal uint64 // machine-wide jiffies from /proc/stat
}

// cpuUsage is what a phase used, in CPU time over its wall time.
type cpuUsage struct {
	wall      time.Duration
	self      time.Duration
	pg        time.Duration
	pgbench   time.Duration
	busyFrac  float64 // of all the machine's cores, by any process
	stealFrac float64 // taken by the hypervisor: capacity this VM did not get
}

// otherCores is the CPU that processes other than ours used: another job on
// the machine makes the phase's numbers unreliable.
func (u cpuUsage) otherCores(cpus int) float64 {
	ours := u.cores(u.self) + u.cores(u.pg) + u.cores(u.pgbench)
	return max(0, u.busyFrac*float64(cpus)-ours)
}

// clockTick is USER_HZ, the unit of /proc's CPU times; Linux fixes it at 100.
const clockTick = 10 * time.Millisecond

func newCPUMeter(dataDir string) (*cpuMeter, error) {
	b, err := os.ReadFile(filepath.Join(dataDir, "postmaster.pid"))
	if err != nil {
		return nil, err
	}
	line, _, _ := strings.Cut(string(b), "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil {
		return nil, fmt.Errorf("postmaster.pid: %w", err)
	}
	return &cpuMeter{postmaster: pid}, nil
}

func (m *cpuMeter) sample() cpuSample {
	s := cpuSample{at: time.Now()}
	if st, ok := readStat(os.Getpid()); ok {
		s.self = st.utime + st.stime
	}
	if st, ok := readStat(m.postmaster); ok {
		s.pg = st.utime + st.stime + st.cutime + st.cstime
	}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == m.postmaster {
			continue
		}
		if st, ok := readStat(pid); ok && st.ppid == m.postmaster {
			s.pg += st.utime + st.stime
		}
	}
	s.busy, s.idle, s.steal = machineJiffies()
	return s
}

// since is the usage from s0 to now.
func (m *cpuMeter) since(s0 cpuSample) cpuUsage {
	s1 := m.sample()
	u := cpuUsage{wall: s1.at.Sub(s0.at), self: s1.self - s0.self, pg: s1.pg - s0.pg}
	if total := (s1.busy - s0.busy) + (s1.idle - s0.idle) + (s1.steal - s0.steal); total > 0 {
		u.busyFrac = float64(s1.busy-s0.busy) / float64(total)
		u.stealFrac = float64(s1.steal-s0.steal) / float64(total)
	}
	return u
}

// cores is how many cores' worth of time d is over the usage's wall time.
func (u cpuUsage) cores(d time.Duration) float64 {
	if u.wall <= 0 {
		return 0
	}
	return d.Seconds() / u.wall.Seconds()
}

// procStat is the part of /proc/PID/stat the meter uses.
type procStat struct {
	ppid                         int
	utime, stime, cutime, cstime time.Duration
}

func readStat(pid int) (procStat, bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return procStat{}, false
	}
	// The command name may hold spaces and parentheses; fields restart
	// after the last ")", at field 3 (state).
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return procStat{}, false
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 15 {
		return procStat{}, false
	}
	num := func(k int) time.Duration { v, _ := strconv.ParseInt(f[k], 10, 64); return time.Duration(v) * clockTick }
	ppid, _ := strconv.Atoi(f[1])
	return procStat{ppid: ppid, utime: num(11), stime: num(12), cutime: num(13), cstime: num(14)}, true
}

// machineJiffies returns the busy, idle (idle plus iowait) and stolen time
// of all cores.
func machineJiffies() (busy, idle, steal uint64) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0, 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return 0, 0, 0
	}
	for k := 1; k <= 8; k++ { // user nice system idle iowait irq softirq steal
		v, _ := strconv.ParseUint(f[k], 10, 64)
		switch k {
		case 4, 5:
			idle += v
		case 8:
			steal += v
		default:
			busy += v
		}
	}
	return busy, idle, steal
}

// ---- cold start ----

// coldStarts are the measurements of the local runner started afresh.
type coldStarts struct {
	firstOK []time.Duration // exec to the first 200 of GET /
	rssKB   []int64         // VmRSS after a few requests and the idle time
}

// measureColdStarts builds the local runner and starts it runs times against
// the running cluster, each time as a new process on a free port.
// env is added to the environment the runner gets.
func measureColdStarts(ctx context.Context, dbURL string, env []string, runs int, idle time.Duration) (coldStarts, error) {
	var cs coldStarts
	dir, err := os.MkdirTemp("", "bench-fn-")
	if err != nil {
		return cs, err
	}
	defer os.RemoveAll(dir)
	bin, err := buildRunner(ctx, dir)
	if err != nil {
		return cs, err
	}
	for range runs {
		ok, rss, err := coldStart(ctx, bin, dbURL, env, idle)
		if err != nil {
			return cs, err
		}
		cs.firstOK = append(cs.firstOK, ok)
		cs.rssKB = append(cs.rssKB, rss)
	}
	return cs, nil
}

// moduleRoot is the folder of go.mod, so the build works from any folder of
// the module (go test runs in cmd/).
func moduleRoot(ctx context.Context) (string, error) {
	out, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	gomod := strings.TrimSpace(string(out))
	if err != nil || gomod == "" || gomod == os.DevNull {
		return "", fmt.Errorf("finding the module root (run bench inside the module): %v", err)
	}
	return filepath.Dir(gomod), nil
}

// coldStart runs bin once: the time from exec to its first 200, then its
// resident memory after it served a few requests and sat idle.
func coldStart(ctx context.Context, bin, dbURL string, env []string, idle time.Duration) (time.Duration, int64, error) {
	port, err := freeLoopbackPort()
	if err != nil {
		return 0, 0, err
	}
	base := "http://127.0.0.1:" + strconv.Itoa(port)
	cmd := exec.Command(bin)
	cmd.Env = append(withoutEnv("PORT="),
		"DATABASE_URL="+dbURL, "HOST=127.0.0.1", "PORT="+strconv.Itoa(port))
	cmd.Env = append(cmd.Env, env...)
	var logs bytes.Buffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return 0, 0, err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer stopProcess(cmd, exited)

	// A fresh client per run: no connection is carried over from the last.
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{}}
	defer client.CloseIdleConnections()
	get := loadRequest{method: http.MethodGet, url: base + "/"}
	deadline := start.Add(30 * time.Second)
	var firstOK time.Duration
	for {
		err := get.do(ctx, client)
		if err == nil {
			firstOK = time.Since(start)
			break
		}
		select {
		case werr := <-exited:
			exited <- werr
			return 0, 0, fmt.Errorf("the runner exited before answering: %v\n%s", werr, logs.String())
		case <-ctx.Done():
			return 0, 0, ctx.Err()
		case <-time.After(time.Millisecond):
		}
		if time.Now().After(deadline) {
			return 0, 0, fmt.Errorf("no 200 from the runner within 30s: %w\n%s", err, logs.String())
		}
	}
	post := loadRequest{method: http.MethodPost, url: base + "/", body: []byte(`{"content":"` + benchContent + `"}`)}
	for range 10 {
		if err := post.do(ctx, client); err != nil {
			return 0, 0, err
		}
		if err := get.do(ctx, client); err != nil {
			return 0, 0, err
		}
	}
	if !sleepUntil(ctx, time.Now().Add(idle)) {
		return 0, 0, ctx.Err()
	}
	rss, err := procStatusKB(cmd.Process.Pid, "VmRSS:")
	return firstOK, rss, err
}

// stopProcess asks the runner to shut down as Cloud Run would, with SIGTERM,
// and kills it if it has not exited in 10 s.
func stopProcess(cmd *exec.Cmd, exited chan error) {
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		<-exited
	}
}

func freeLoopbackPort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// buildRunner builds this module's runner as deployed, with the
// OpenTelemetry SDK (go build -tags otlp -o DIR/fn ./cmd/pscmessages), for
// the benchmarks that start it as its own process.
func buildRunner(ctx context.Context, dir string) (string, error) {
	bin := filepath.Join(dir, "fn")
	root, err := moduleRoot(ctx)
	if err != nil {
		return "", err
	}
	build := exec.CommandContext(ctx, "go", "build", "-tags", "otlp", "-o", bin, "./cmd/pscmessages")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build -tags otlp ./cmd/pscmessages: %w: %s", err, bytes.TrimSpace(out))
	}
	return bin, nil
}

// ---- the machine ----

// machineInfo says what the numbers were measured on.
type machineInfo struct {
	cpus       int // what nproc prints: the CPUs this process may run on
	gomaxprocs int
	cpuModel   string
	goVersion  string
	pgVersion  string
	durability string
	maxConnsPG string
	maxConns   string // the function's DB_MAX_CONNS
}

func describeMachine() machineInfo {
	m := machineInfo{cpus: runtime.NumCPU(), gomaxprocs: runtime.GOMAXPROCS(0), goVersion: runtime.Version(), cpuModel: "unknown"}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.Lines(string(b)) {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.cpuModel = strings.TrimSpace(v)
				break
			}
		}
	}
	return m
}

// readServer records the server's version and the settings that decide
// what a commit costs.
func (m *machineInfo) readServer(ctx context.Context, conn *pgx.Conn) error {
	var fsync, syncCommit string
	err := conn.QueryRow(ctx, "SELECT current_setting('server_version'), current_setting('fsync'), "+
		"current_setting('synchronous_commit'), current_setting('max_connections')").
		Scan(&m.pgVersion, &fsync, &syncCommit, &m.maxConnsPG)
	m.durability = "fsync=" + fsync + ", synchronous_commit=" + syncCommit
	return err
}

// ---- the report ----

// loadRow is one concurrency of the load phases.
type loadRow struct {
	c          int
	post, get  loadStats
	batches    batchSizes
	pgbench    pgbenchResult
	noDB       loadStats // POST / of an empty message: HTTP only
	postCPU    cpuUsage
	getCPU     cpuUsage
	pgbenchCPU cpuUsage
	noDBCPU    cpuUsage
}

// sizeRow is GET / on a table of a given size.
type sizeRow struct {
	rows int
	get  loadStats
}

// benchReport is everything one run measured.
type benchReport struct {
	cfg     benchConfig
	machine machineInfo
	load    []loadRow
	sizes   []sizeRow
	cold    coldStarts
}

// noisyCores is how much CPU other processes may take during a phase before
// its numbers are flagged: well above what the kernel's own loopback work,
// charged to other processes, shows on a quiet machine
// (cmd/pscbench/BENCHMARKS.md).
const noisyCores = 0.3

// targetShare is the POST rate, as a share of pgbench's, that group commit
// is expected to reach at a concurrency of 8 and more.
const targetShare = 0.80

// targetNote says whether POST reached targetShare of pgbench at every
// concurrency of 8 or more that was measured. A level that did not run, or
// whose POST or pgbench rate is missing, is "not measured", never "met".
func targetNote(rows []loadRow) string {
	prefix := fmt.Sprintf("target POST >= %.0f%% of pgbench at c>=8: ", 100*targetShare)
	var misses, unmeasured []string
	measured := 0
	for _, row := range rows {
		if row.c < 8 {
			continue
		}
		if row.post.rate <= 0 || row.pgbench.tps <= 0 {
			unmeasured = append(unmeasured, fmt.Sprintf("c=%d", row.c))
			continue
		}
		measured++
		if share := row.post.rate / row.pgbench.tps; share < targetShare {
			misses = append(misses, fmt.Sprintf("c=%d (%.0f%%)", row.c, 100*share))
		}
	}
	var parts []string
	switch {
	case measured == 0 && len(unmeasured) == 0:
		return prefix + "not measured (no level with c>=8 ran; see -c)"
	case len(misses) > 0:
		parts = append(parts, "missed at "+strings.Join(misses, ", "))
	case measured > 0:
		parts = append(parts, "met")
	}
	if len(unmeasured) > 0 {
		parts = append(parts, "not measured at "+strings.Join(unmeasured, ", "))
	}
	return prefix + strings.Join(parts, "; ")
}

func (r *benchReport) tables() []reportTable {
	m := r.machine
	machine := reportTable{
		title: "Machine",
		head:  []string{"what", "value"},
		rows: [][]string{
			{"nproc", strconv.Itoa(m.cpus)},
			{"GOMAXPROCS of the bench process", strconv.Itoa(m.gomaxprocs)},
			{"CPU", m.cpuModel},
			{"Go", m.goVersion},
			{"PostgreSQL", m.pgVersion + " (" + m.durability + ", max_connections=" + m.maxConnsPG + ")"},
			{"function pool", "DB_MAX_CONNS=" + m.maxConns},
			{"load", fmt.Sprintf("%s client, closed loop, %v measured after %v warm-up; pgbench -T %ds", r.cfg.client, r.cfg.duration, r.cfg.warmup, max(1, int(math.Ceil(r.cfg.duration.Seconds()))))},
		},
	}

	load := reportTable{
		title: "POST / and GET / beside pgbench (same INSERT, same table)",
		head: []string{"c", "POST req/s", "POST p50 ms", "POST p99 ms", "rows/commit (max)",
			"pgbench tps", "pgbench p50 ms", "pgbench p99 ms", "POST % of pgbench", "GET req/s", "GET p50 ms", "GET p99 ms",
			"no-DB POST req/s", "POST % of no-DB"},
	}
	cpu := reportTable{
		title: "CPU split over each measured window (cores busy; the machine has " + strconv.Itoa(m.cpus) + ")",
		head:  []string{"phase", "c", "bench process (function + load generator)", "postgres", "pgbench", "other processes", "machine busy %", "steal %"},
	}
	var noisy []string
	for _, row := range r.load {
		load.rows = append(load.rows, []string{
			strconv.Itoa(row.c), fmtRate(row.post), fmtMS(row.post.p50), fmtMS(row.post.p99), fmt.Sprintf("%.1f (%d)", row.batches.mean, row.batches.max),
			fmt.Sprintf("%.0f", row.pgbench.tps), fmtMS(row.pgbench.p50), fmtMS(row.pgbench.p99), fmtPct(row.post.rate, row.pgbench.tps),
			fmtRate(row.get), fmtMS(row.get.p50), fmtMS(row.get.p99),
			fmtRate(row.noDB), fmtPct(row.post.rate, row.noDB.rate),
		})
		for _, p := range []struct {
			name string
			u    cpuUsage
		}{{"POST /", row.postCPU}, {"pgbench", row.pgbenchCPU}, {"GET /", row.getCPU}, {"no-DB POST /", row.noDBCPU}} {
			pgb := "-"
			if p.u.pgbench > 0 {
				pgb = fmt.Sprintf("%.2f", p.u.cores(p.u.pgbench))
			}
			if p.u.otherCores(m.cpus) > noisyCores {
				noisy = append(noisy, fmt.Sprintf("%s c=%d", p.name, row.c))
			}
			cpu.rows = append(cpu.rows, []string{p.name, strconv.Itoa(row.c),
				fmt.Sprintf("%.2f", p.u.cores(p.u.self)), fmt.Sprintf("%.2f", p.u.cores(p.u.pg)), pgb,
				fmt.Sprintf("%.2f", p.u.otherCores(m.cpus)), fmt.Sprintf("%.0f%%", 100*p.u.busyFrac), fmt.Sprintf("%.0f%%", 100*p.u.stealFrac)})
		}
	}
	if len(noisy) > 0 {
		cpu.notes = append(cpu.notes, fmt.Sprintf("other processes used over %.1f cores during %s: those numbers are not this code's; run again on a quiet machine",
			noisyCores, strings.Join(noisy, ", ")))
	}
	load.notes = append(load.notes, targetNote(r.load))
	load.notes = append(load.notes, r.errorNotes()...)

	sizes := reportTable{
		title: fmt.Sprintf("GET / (newest page of 100) against table size, c=%d", r.cfg.getConc),
		head:  []string{"rows in messages", "GET req/s", "GET p50 ms", "GET p99 ms"},
	}
	for _, s := range r.sizes {
		sizes.rows = append(sizes.rows, []string{strconv.Itoa(s.rows), fmtRate(s.get), fmtMS(s.get.p50), fmtMS(s.get.p99)})
	}

	out := []reportTable{machine, load, cpu, sizes}
	if n := len(r.cold.firstOK); n > 0 {
		ok := slices.Sorted(slices.Values(r.cold.firstOK))
		rss := slices.Sorted(slices.Values(r.cold.rssKB))
		out = append(out, reportTable{
			title: fmt.Sprintf("Local runner (go build ./cmd/pscmessages) started afresh, %d runs", n),
			head:  []string{"what", "median", "min", "max"},
			rows: [][]string{
				{"exec to first 200 of GET / (ms)", fmtMS(ok[n/2]), fmtMS(ok[0]), fmtMS(ok[n-1])},
				{fmt.Sprintf("idle RSS after 20 requests + %v (MiB)", r.cfg.idle), fmtMiB(rss[n/2]), fmtMiB(rss[0]), fmtMiB(rss[n-1])},
			},
		})
	}
	return out
}

// errorNotes lists the phases where requests failed; their rates count only
// successes.
func (r *benchReport) errorNotes() []string {
	var notes []string
	add := func(what string, c int, l loadStats) {
		if l.errors > 0 {
			notes = append(notes, fmt.Sprintf("%s c=%d: %d failed requests, first: %v", what, c, l.errors, l.firstErr))
		}
	}
	for _, row := range r.load {
		add("POST /", row.c, row.post)
		add("GET /", row.c, row.get)
		add("no-DB POST /", row.c, row.noDB)
	}
	for _, s := range r.sizes {
		add(fmt.Sprintf("GET / (%d rows)", s.rows), r.cfg.getConc, s.get)
	}
	return notes
}

// Cell formats: rates in requests per second, times in milliseconds.
func fmtRate(l loadStats) string   { return fmt.Sprintf("%.0f", l.rate) }
func fmtMS(d time.Duration) string { return fmt.Sprintf("%.2f", float64(d)/float64(time.Millisecond)) }
func fmtMiB(kb int64) string       { return fmt.Sprintf("%.1f", float64(kb)/1024) }

func fmtPct(part, whole float64) string {
	if whole <= 0 {
		return "-"
	}
	return fmt.Sprintf("%.0f%%", 100*part/whole)
}

// write prints the tables as text, and again as Markdown if asked.
func (r *benchReport) write(w io.Writer, markdown bool) {
	tables := r.tables()
	for _, t := range tables {
		t.writeText(w)
	}
	if markdown {
		for _, t := range tables {
			t.writeMarkdown(w)
		}
	}
}

// reportTable is one titled table of the report, printable as text or Markdown.
type reportTable struct {
	title string
	head  []string
	rows  [][]string
	notes []string
}

func (t reportTable) writeText(w io.Writer) {
	fmt.Fprintf(w, "\n%s\n", t.title)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	line := func(cells []string) { fmt.Fprintln(tw, strings.Join(cells, "\t")+"\t") }
	line(t.head)
	for _, r := range t.rows {
		line(r)
	}
	tw.Flush()
	for _, n := range t.notes {
		fmt.Fprintln(w, n)
	}
}

func (t reportTable) writeMarkdown(w io.Writer) {
	fmt.Fprintf(w, "\n#### %s\n\n", t.title)
	fmt.Fprintf(w, "| %s |\n", strings.Join(t.head, " | "))
	sep := make([]string, len(t.head))
	for i := range sep {
		sep[i] = "---:"
	}
	sep[0] = "---"
	fmt.Fprintf(w, "|%s|\n", strings.Join(sep, "|"))
	for _, r := range t.rows {
		fmt.Fprintf(w, "| %s |\n", strings.Join(r, " | "))
	}
	if len(t.notes) > 0 {
		fmt.Fprintln(w)
		for _, n := range t.notes {
			fmt.Fprintf(w, "- %s\n", n)
		}
	}
}
