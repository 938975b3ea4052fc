package main

import (
	"bytes"
	"context"
	"encoding/json"
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
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"

	"example.com/pscmessages/store/grants"
	"example.com/pscmessages/store/localpg"
	"example.com/pscmessages/store/migrations"
)

// bench-instances simulates Cloud Run scaling the HTTP function out: N
// runner processes, each with its own pool of DB_MAX_CONNS connections,
// against one PostgreSQL whose max_connections is far below
// N × DB_MAX_CONNS. It runs four configurations in turn, each with the same
// closed-loop POST load spread over its processes:
//
//   - one process, direct (the yardstick), then through PgBouncer (what the
//     pooler costs at the same batching);
//   - N processes, direct: logins beyond max_connections fail, and each
//     such request must be a 503 with Retry-After, never a 500;
//   - N processes through PgBouncer (transaction mode, DB_POOLER=transaction)
//     whose server pool fits max_connections: every request must succeed.
//
// Every POST carries a unique content; after each phase every acknowledged
// one (a 200) must be in the table.
type instancesConfig struct {
	procs     int           // runner processes in the many-instance phases
	conc      int           // closed-loop workers, spread over the processes
	maxConns  int           // DB_MAX_CONNS of each process
	maxServer int           // PostgreSQL max_connections
	poolSize  int           // PgBouncer default_pool_size (its server pool)
	duration  time.Duration // measured window of each phase
	warmup    time.Duration // unmeasured lead-in of each phase
	rounds    int           // times the four phases run, in turn
	markdown  bool
	progress  io.Writer
}

func runBenchInstances(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("instances", flag.ContinueOnError)
	cfg := instancesConfig{progress: os.Stderr}
	fs.IntVar(&cfg.procs, "n", 16, "runner `processes` in the many-instance phases")
	fs.IntVar(&cfg.conc, "c", 32, "closed-loop POST `workers`, spread round-robin over the processes")
	fs.IntVar(&cfg.maxConns, "db-max-conns", 4, "DB_MAX_CONNS of each process (`n`)")
	fs.IntVar(&cfg.maxServer, "max-connections", 13, "PostgreSQL max_connections (`n`); 3 of them are reserved for superusers, so 13 leaves the functions 10")
	fs.IntVar(&cfg.poolSize, "pool", 10, "PgBouncer's server pool (default_pool_size, `n`)")
	fs.DurationVar(&cfg.duration, "duration", 5*time.Second, "measured `time` of each phase")
	fs.DurationVar(&cfg.warmup, "warmup", time.Second, "unmeasured `time` before each phase")
	fs.IntVar(&cfg.rounds, "rounds", 1, "how many times the four phases run in turn (`n`)")
	fs.BoolVar(&cfg.markdown, "markdown", false, "also print the table as Markdown")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), "usage: go run ./cmd/pscbench instances [flags]\n\n"+
			"Runs N function processes, each with its own pool, against one PostgreSQL whose\n"+
			"max_connections is far below N x DB_MAX_CONNS: one process direct, N direct, then N\n"+
			"through a transaction-mode PgBouncer, under the same POST load. Needs pgbouncer.\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if cfg.procs < 1 || cfg.conc < 1 || cfg.maxConns < 1 || cfg.maxServer < 5 || cfg.poolSize < 1 || cfg.rounds < 1 || cfg.duration <= 0 {
		return errors.New("-n, -c, -db-max-conns, -pool and -rounds must be positive, -max-connections at least 5, -duration positive")
	}
	rows, err := benchInstances(ctx, cfg)
	if err != nil {
		return err
	}
	writeInstances(os.Stdout, cfg, rows)
	return nil
}

// instancesRow is one phase's outcome.
type instancesRow struct {
	name       string
	procs      int
	ok         int // 2xx in the window
	rate       float64
	byStatus   map[int]int // non-2xx answers in the window and warm-up
	noRetry    int         // 503s without Retry-After
	transport  int         // requests with no HTTP answer
	acked      int         // every 200 of the phase, warm-up included
	missing    int         // acknowledged contents not in the table
	maxBackend int         // most server connections of the function's role seen at once
}

func benchInstances(ctx context.Context, cfg instancesConfig) ([]instancesRow, error) {
	if _, err := localpg.FindPgBouncer(); err != nil {
		return nil, err
	}
	cluster, err := localpg.Start(ctx, localpg.Options{Durable: true, Settings: map[string]string{
		"max_connections": strconv.Itoa(cfg.maxServer),
	}})
	if err != nil {
		return nil, err
	}
	defer cluster.Destroy()
	if err := cluster.CreateDatabase(ctx, benchDB); err != nil {
		return nil, err
	}
	// The functions log in as a plain role, so max_connections binds them
	// as it binds Cloud SQL's IAM users; the checks use the superuser, who
	// has reserved slots.
	const role = "fn"
	admin, err := pgx.Connect(ctx, cluster.SuperuserURL(benchDB))
	if err != nil {
		return nil, err
	}
	defer admin.Close(context.Background())
	if err := migrations.Apply(ctx, admin, nil); err != nil {
		return nil, err
	}
	if _, err := admin.Exec(ctx, "CREATE ROLE "+role+" LOGIN"); err != nil {
		return nil, err
	}
	for _, sql := range grants.SQL(role, grants.Functions()) {
		if _, err := admin.Exec(ctx, sql); err != nil {
			return nil, err
		}
	}
	bouncer, err := localpg.StartBouncer(ctx, localpg.BouncerOptions{Upstream: cluster, DefaultPoolSize: cfg.poolSize, Users: []string{role}})
	if err != nil {
		return nil, err
	}
	defer bouncer.Destroy()

	dir, err := os.MkdirTemp("", "bench-instances-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	bin, err := buildRunner(ctx, dir)
	if err != nil {
		return nil, err
	}

	direct := cluster.URL(role, "", benchDB)
	pooled := bouncer.URL(role, "", benchDB)
	phases := []struct {
		name   string
		procs  int
		url    string
		pooler string
	}{
		{"1 process, direct", 1, direct, ""},
		{fmt.Sprintf("1 process, PgBouncer pool %d", cfg.poolSize), 1, pooled, "transaction"},
		{fmt.Sprintf("%d processes, direct", cfg.procs), cfg.procs, direct, ""},
		{fmt.Sprintf("%d processes, PgBouncer pool %d", cfg.procs, cfg.poolSize), cfg.procs, pooled, "transaction"},
	}
	var rows []instancesRow
	for round := range cfg.rounds {
		for i, p := range phases {
			fmt.Fprintf(cfg.progress, "round %d: %s, c=%d\n", round+1, p.name, cfg.conc)
			// PgBouncer keeps its server connections open when idle, and
			// they would take the direct phases' slots: it runs only for
			// its own phases.
			if p.pooler == "" {
				err = bouncer.Stop()
			} else {
				err = bouncer.Start(ctx)
			}
			if err != nil {
				return rows, err
			}
			row, err := instancesPhase(ctx, cfg, bin, admin, role, fmt.Sprintf("r%dp%d", round, i), p.procs, p.url, p.pooler)
			if err != nil {
				return rows, fmt.Errorf("%s: %w", p.name, err)
			}
			row.name = p.name
			rows = append(rows, row)
		}
	}
	return rows, nil
}

// instancesPhase starts procs runners, loads them, stops them and checks
// that every acknowledged write is stored.
func instancesPhase(ctx context.Context, cfg instancesConfig, bin string, admin *pgx.Conn, role, tag string, procs int, dbURL, pooler string) (instancesRow, error) {
	row := instancesRow{procs: procs, byStatus: map[int]int{}}
	bases := make([]string, procs)
	var stops []func()
	defer func() {
		for _, stop := range stops {
			stop()
		}
	}()
	logs := make([]*bytes.Buffer, procs)
	for i := range procs {
		port, err := freeLoopbackPort()
		if err != nil {
			return row, err
		}
		cmd := exec.Command(bin)
		cmd.Env = append(withoutEnv("PUBSUB_"), "DATABASE_URL="+dbURL, "HOST=127.0.0.1", "PORT="+strconv.Itoa(port),
			"DB_MAX_CONNS="+strconv.Itoa(cfg.maxConns), "DB_MIGRATE=false", "DB_POOLER="+pooler,
			"DB_CONNECT_TIMEOUT=2s", "FUNCTION_TARGET=Messages")
		logs[i] = &bytes.Buffer{}
		cmd.Stdout, cmd.Stderr = logs[i], logs[i]
		if err := cmd.Start(); err != nil {
			return row, err
		}
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		stops = append(stops, func() { stopProcess(cmd, exited) })
		bases[i] = "http://127.0.0.1:" + strconv.Itoa(port)
	}
	// Wait until every runner listens (a 503 is an answer too: the pool
	// opens on the first request, which is part of the load).
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		MaxIdleConnsPerHost: cfg.conc, MaxIdleConns: 2 * cfg.conc, DisableCompression: true}}
	defer client.CloseIdleConnections()
	for _, base := range bases {
		deadline := time.Now().Add(30 * time.Second)
		for {
			resp, err := client.Get(base + "/nonexistent-path-for-readiness")
			if err == nil {
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				break
			}
			if time.Now().After(deadline) {
				return row, fmt.Errorf("runner at %s never listened: %v", base, err)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}

	var (
		mu       sync.Mutex
		acked    []string
		stop     atomic.Bool
		measure  atomic.Bool
		okInWin  atomic.Int64
		wg       sync.WaitGroup
		maxConns atomic.Int64
	)
	start := time.Now()
	for w := range cfg.conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			base := bases[w%procs]
			for i := 0; !stop.Load(); i++ {
				content := fmt.Sprintf("%s-w%d-%d", tag, w, i)
				body, _ := json.Marshal(map[string]string{"content": content})
				req, _ := http.NewRequestWithContext(ctx, http.MethodPost, base+"/", bytes.NewReader(body))
				req.Header.Set("Content-Type", "application/json")
				resp, err := client.Do(req)
				if err != nil {
					mu.Lock()
					row.transport++
					mu.Unlock()
					time.Sleep(50 * time.Millisecond)
					continue
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					if measure.Load() {
						okInWin.Add(1)
					}
					mu.Lock()
					acked = append(acked, content)
					mu.Unlock()
					continue
				}
				mu.Lock()
				row.byStatus[resp.StatusCode]++
				if resp.StatusCode == http.StatusServiceUnavailable && resp.Header.Get("Retry-After") == "" {
					row.noRetry++
				}
				mu.Unlock()
				// A client that honours Retry-After waits; a short pause
				// keeps the loop from spinning on fast refusals.
				time.Sleep(50 * time.Millisecond)
			}
		}()
	}
	// Sample the function role's server connections during the phase.
	sampleDone := make(chan struct{})
	go func() {
		defer close(sampleDone)
		for !stop.Load() {
			var n int64
			if err := admin.QueryRow(ctx, "SELECT count(*) FROM pg_stat_activity WHERE usename = $1", role).Scan(&n); err == nil && n > maxConns.Load() {
				maxConns.Store(n)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}()
	if !sleepUntil(ctx, start.Add(cfg.warmup)) {
		return row, ctx.Err()
	}
	measure.Store(true)
	winStart := time.Now()
	if !sleepUntil(ctx, winStart.Add(cfg.duration)) {
		return row, ctx.Err()
	}
	measure.Store(false)
	window := time.Since(winStart)
	stop.Store(true)
	wg.Wait()
	<-sampleDone
	for _, s := range stops {
		s()
	}
	stops = nil

	row.ok = int(okInWin.Load())
	row.rate = float64(row.ok) / window.Seconds()
	row.acked = len(acked)
	row.maxBackend = int(maxConns.Load())
	err := admin.QueryRow(ctx, "SELECT count(*) FROM unnest($1::text[]) a WHERE NOT EXISTS (SELECT 1 FROM messages WHERE content = a)", acked).Scan(&row.missing)
	if err != nil {
		return row, fmt.Errorf("checking the acknowledged writes: %w", err)
	}
	if row.byStatus[http.StatusInternalServerError] > 0 {
		for i, l := range logs {
			if strings.Contains(l.String(), `"severity":"ERROR"`) {
				fmt.Fprintf(cfg.progress, "runner %d logged errors (first 2000 bytes):\n%.2000s\n", i, l.String())
				break
			}
		}
	}
	return row, nil
}

func writeInstances(w io.Writer, cfg instancesConfig, rows []instancesRow) {
	header := []string{"phase", "processes", "POST 2xx/s", "non-2xx (status: count)", "503 without Retry-After", "no answer", "acknowledged", "acknowledged but missing", "max server conns of the role"}
	var table [][]string
	for _, r := range rows {
		var codes []string
		for code, n := range r.byStatus {
			codes = append(codes, fmt.Sprintf("%d: %d", code, n))
		}
		non2xx := "0"
		if len(codes) > 0 {
			non2xx = strings.Join(codes, ", ")
		}
		table = append(table, []string{r.name, strconv.Itoa(r.procs), fmt.Sprintf("%.0f", r.rate), non2xx,
			strconv.Itoa(r.noRetry), strconv.Itoa(r.transport), strconv.Itoa(r.acked), strconv.Itoa(r.missing), strconv.Itoa(r.maxBackend)})
	}
	fmt.Fprintf(w, "c=%d closed-loop POST workers, DB_MAX_CONNS=%d per process, max_connections=%d, %v measured after %v warm-up\n\n",
		cfg.conc, cfg.maxConns, cfg.maxServer, cfg.duration, cfg.warmup)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, strings.Join(header, "\t")+"\t")
	for _, r := range table {
		fmt.Fprintln(tw, strings.Join(r, "\t")+"\t")
	}
	tw.Flush()
	// The target: through PgBouncer at least 0.8x direct in the same run.
	for i := 0; i+3 < len(rows); i += 4 {
		if rows[i].rate > 0 {
			fmt.Fprintf(w, "round %d: 1 process through PgBouncer / direct = %.2f; %d processes through PgBouncer / 1 process direct = %.2f\n",
				i/4+1, rows[i+1].rate/rows[i].rate, cfg.procs, rows[i+3].rate/rows[i].rate)
		}
	}
	if cfg.markdown {
		fmt.Fprintln(w)
		fmt.Fprintln(w, "| "+strings.Join(header, " | ")+" |")
		fmt.Fprintln(w, "|"+strings.Repeat("---|", len(header)))
		for _, r := range table {
			fmt.Fprintln(w, "| "+strings.Join(r, " | ")+" |")
		}
	}
}
