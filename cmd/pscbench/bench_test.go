package main

import (
	"testing"
	"time"
)

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
