package main

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

// TestBenchTiny runs every phase of the bench command end to end at a size
// that proves the plumbing (cluster, function, load, pgbench, cold start),
// not the numbers.
func TestBenchTiny(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL, runs pgbench and builds the runner")
	}
	// bench points the function at its cluster through the environment;
	// t.Setenv restores what was there.
	t.Setenv("DATABASE_URL", "")
	t.Setenv("DB_MAX_CONNS", "")
	cfg, err := parseBenchFlags([]string{"-duration", "300ms", "-warmup", "50ms", "-c", "1,4",
		"-get-c", "2", "-rows", "1000", "-cold-runs", "1", "-idle", "50ms", "-db-max-conns", "4"})
	if err != nil {
		t.Fatal(err)
	}
	rep, err := bench(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.load) != 2 || len(rep.sizes) != 2 || len(rep.cold.firstOK) != 1 {
		t.Fatalf("phases measured: load %d, sizes %d, cold starts %d", len(rep.load), len(rep.sizes), len(rep.cold.firstOK))
	}
	for _, row := range rep.load {
		if row.post.n == 0 || row.get.n == 0 || row.pgbench.tps <= 0 || row.pgbench.p99 <= 0 {
			t.Errorf("c=%d measured nothing: POST %d, GET %d, pgbench %.0f tps p99 %v", row.c, row.post.n, row.get.n, row.pgbench.tps, row.pgbench.p99)
		}
		if row.batches.mean < 1 || row.batches.max > int64(row.c) {
			t.Errorf("c=%d: batches of %.2f rows on average, %d at most", row.c, row.batches.mean, row.batches.max)
		}
	}
	if notes := rep.errorNotes(); len(notes) > 0 {
		t.Errorf("failed requests:\n%s", strings.Join(notes, "\n"))
	}
	if rep.cold.firstOK[0] <= 0 || rep.cold.rssKB[0] <= 0 {
		t.Errorf("cold start: %v to first 200, %d kB RSS", rep.cold.firstOK[0], rep.cold.rssKB[0])
	}
	var out bytes.Buffer
	rep.write(&out, true)
	for _, want := range []string{"POST % of pgbench", "| c | POST req/s |", "rows in messages", "exec to first 200"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
}

func TestParsePGBench(t *testing.T) {
	const out = `pgbench (15.20 (Debian 15.20-0+deb12u1))
transaction type: insert.sql
scaling factor: 1
query mode: prepared
number of clients: 8
number of threads: 2
maximum number of tries: 1
duration: 5 s
number of transactions actually processed: 66795
number of failed transactions: 0 (0.000%)
latency average = 0.598 ms
initial connection time = 5.329 ms
tps = 13374.312226 (without initial connection time)
`
	res, err := parsePGBench(out)
	if err != nil {
		t.Fatal(err)
	}
	if res.tps != 13374.312226 || res.n != 66795 || res.avg != 598*time.Microsecond {
		t.Errorf("parsed %+v", res)
	}
	if _, err := parsePGBench("pgbench: error: connection refused\n"); err == nil {
		t.Error("output without tps parsed")
	}
}

func TestPercentile(t *testing.T) {
	var d []time.Duration
	for i := 1; i <= 100; i++ {
		d = append(d, time.Duration(i))
	}
	if p50, p99 := percentile(d, 0.5), percentile(d, 0.99); p50 != 50 || p99 != 99 {
		t.Errorf("p50 %v p99 %v", p50, p99)
	}
	if percentile(nil, 0.99) != 0 || percentile(d[:1], 0.5) != 1 {
		t.Error("edge cases")
	}
}

// TestTargetNote: the c>=8 target is "met" only where a level with c>=8 was
// measured; with none it is "not measured" (`-c 1,4` must not claim it).
func TestTargetNote(t *testing.T) {
	row := func(c int, post, tps float64) loadRow {
		var r loadRow
		r.c, r.post.rate, r.pgbench.tps = c, post, tps
		return r
	}
	cases := []struct {
		rows []loadRow
		want string
	}{
		{nil, "not measured (no level with c>=8 ran; see -c)"},
		{[]loadRow{row(1, 3000, 7000), row(4, 9000, 12000)}, "not measured (no level with c>=8 ran; see -c)"},
		{[]loadRow{row(8, 18000, 20000), row(32, 30000, 30000)}, "met"},
		{[]loadRow{row(8, 14000, 20000), row(32, 30000, 30000)}, "missed at c=8 (70%)"},
		{[]loadRow{row(8, 18000, 20000), row(32, 30000, 0)}, "met; not measured at c=32"},
		{[]loadRow{row(8, 0, 20000)}, "not measured at c=8"},
	}
	for _, tc := range cases {
		got := targetNote(tc.rows)
		if want := "target POST >= 80% of pgbench at c>=8: " + tc.want; got != want {
			t.Errorf("targetNote(%v) = %q, want %q", tc.rows, got, want)
		}
	}
}
