package store_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// BenchmarkKeyedWritesWithExpiry writes keyed messages (as every Pub/Sub
// delivery is) from 32 callers as fast as the store takes them, with the
// idempotency retention shortened to 2 s and the cleanup run every 500 ms,
// while it samples the size of idempotency_keys every 100 ms. Once keys
// expire the table must stop growing: it levels off near rate × (retention +
// cleanup interval) however long the run. Reported: keyed writes/s, the
// largest table seen (peak-keys) and that peak over rate × (retention +
// interval) (peak/bound), the largest seen in the last third of the run
// (late-peak: no larger than peak when the table has levelled off), and rows
// left at the end. Run it long enough for keys to expire many times over
// (cmd/pscbench/BENCHMARKS.md):
//
//	go test ./store -run '^$' -bench KeyedWritesWithExpiry -benchtime 100000x
func BenchmarkKeyedWritesWithExpiry(b *testing.B) {
	const retention, every, callers = 2 * time.Second, 500 * time.Millisecond, 32
	st, url := openStore(b)
	st.ShortenKeyRetention(retention, every)
	conn := connect(b, url)
	ctx := context.Background()
	var peak atomic.Int64
	type sample struct {
		at time.Time
		n  int64
	}
	var samples []sample
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			var n int64
			if err := conn.QueryRow(ctx, "SELECT count(*) FROM idempotency_keys").Scan(&n); err != nil {
				b.Error(err)
				return
			}
			if n > peak.Load() {
				peak.Store(n)
			}
			samples = append(samples, sample{time.Now(), n})
		}
	}()
	var next atomic.Int64
	var wg sync.WaitGroup
	b.ResetTimer()
	start := time.Now()
	for c := range callers {
		wg.Go(func() {
			for i := next.Add(1); i <= int64(b.N); i = next.Add(1) {
				if _, err := st.Add(ctx, fmt.Sprintf("keyed message %d", i), fmt.Sprintf("pubsub:bench#%d-%d", c, i)); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	close(stop)
	<-sampled
	rate := float64(b.N) / elapsed.Seconds()
	var left int64
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM idempotency_keys").Scan(&left); err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(rate, "writes/s")
	b.ReportMetric(float64(peak.Load()), "peak-keys")
	b.ReportMetric(float64(peak.Load())/(rate*(retention+every).Seconds()), "peak/bound")
	var late int64
	for _, s := range samples {
		if s.at.After(start.Add(2 * elapsed / 3)) {
			late = max(late, s.n)
		}
	}
	b.ReportMetric(float64(late), "late-peak")
	b.ReportMetric(float64(left), "keys-left")
	b.ReportMetric(elapsed.Seconds(), "seconds")
}
