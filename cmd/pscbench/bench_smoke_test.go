//go:build e2e

package main

// The benchmark commands end to end at sizes that prove their plumbing, not
// their numbers. Each builds the runner, starts its own clusters and fresh
// runners and runs pgbench: the end-to-end tier, to keep go test ./... quick.

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
	// bench reads the function's other settings from the environment: a
	// developer's own must not reach it. t.Setenv restores them.
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

// TestBenchRSSTiny runs bench-rss end to end at a size that proves the
// plumbing (build, cluster, fresh runners, both loads, VmHWM), not the
// numbers.
func TestBenchRSSTiny(t *testing.T) {
	var out bytes.Buffer
	cfg := rssConfig{concurrency: 2, eventBytes: 1 << 20, rows: 10, rowBytes: 64 << 10, limit: 100, runs: 1,
		posts: 3, postBytes: 64 << 10, idle: 2, validC: 1, window: 300 * time.Millisecond}
	if err := benchRSS(t.Context(), cfg, &out); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"| 2 concurrent 1 MB Pub/Sub messages | 2× 500 |", "| 2 concurrent GET /?limit=100 over 64 KB rows | 2× 200 |",
		"| 3 concurrent POSTs of 64 KB bodies | 3× 200 |", "| 2 idle senders beside 1 valid deliveries at a time for 300ms | "} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
}
