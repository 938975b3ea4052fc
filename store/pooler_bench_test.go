//go:build e2e || pgbouncer

package store_test

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"example.com/pscmessages/store"
	"example.com/pscmessages/store/localpg"
	"example.com/pscmessages/store/localpg/localpgtest"
)

// BenchmarkPoolerExecModes measures each pgx exec mode through a
// transaction-mode PgBouncer (server pool of 4) on the store's own
// statements: Add (group-committed INSERT), List (a page of 100) and Get,
// each by 16 concurrent callers. Failed calls are counted, not fatal, so an
// unsafe mode shows how it fails (errors/op). "direct" is pgx's default
// (cache_statement) without a pooler. Run it several times
// (cmd/pscbench/BENCHMARKS.md):
//
//	for i in 1 2 3; do go test ./store -run '^$' -bench PoolerExecModes -benchtime 6000x; done
func BenchmarkPoolerExecModes(b *testing.B) {
	ctx := testContext(b)
	name := fmt.Sprintf("s%d", dbSeq.Add(1))
	if err := cluster.CreateDatabase(ctx, name); err != nil {
		b.Fatal(err)
	}
	bouncer := localpgtest.StartBouncer(b, localpg.BouncerOptions{Upstream: cluster, DefaultPoolSize: 4})
	seed, err := store.Open(ctx, store.Config{ConnString: cluster.SuperuserURL(name), Migrate: true})
	if err != nil {
		b.Fatal(err)
	}
	var id int64
	for i := range 200 {
		a, err := seed.Add(ctx, fmt.Sprintf("seed %d", i), "")
		if err != nil {
			b.Fatal(err)
		}
		id = a.ID
	}
	seed.Close()

	modes := []struct{ name, url string }{
		{"direct-cache_statement", cluster.SuperuserURL(name)},
		// The chosen mode without the pooler: what the hop costs, apart from the mode.
		{"direct-cache_describe", cluster.SuperuserURL(name) + "&default_query_exec_mode=cache_describe"},
		{"cache_describe", bouncer.URL("postgres", "", name, "default_query_exec_mode=cache_describe")},
		{"exec", bouncer.URL("postgres", "", name, "default_query_exec_mode=exec")},
		{"simple_protocol", bouncer.URL("postgres", "", name, "default_query_exec_mode=simple_protocol")},
		{"describe_exec", bouncer.URL("postgres", "", name, "default_query_exec_mode=describe_exec")},
		{"cache_statement", bouncer.URL("postgres", "", name, "default_query_exec_mode=cache_statement")},
	}
	ops := []struct {
		name string
		fn   func(*store.Store) error
	}{
		{"add", func(st *store.Store) error { _, err := st.Add(ctx, "bench message", ""); return err }},
		{"list", func(st *store.Store) error { _, err := st.List(ctx, store.Page{}); return err }},
		{"get", func(st *store.Store) error { _, err := st.Get(ctx, id); return err }},
	}
	stores := make([]*store.Store, len(modes))
	for i, m := range modes {
		// Pooler none: the URL's mode is used as it is, unsafe ones included.
		st, err := store.Open(ctx, store.Config{ConnString: m.url, MaxConns: 4})
		if err != nil {
			b.Fatal(err)
		}
		defer st.Close()
		stores[i] = st
	}
	// The modes take turns in chunks of 200 calls, in a rotating order, so
	// that load from other work on a shared machine falls on all of them.
	const chunk, workers = 200, 16
	for _, op := range ops {
		b.Run(op.name, func(b *testing.B) {
			spent := make([]time.Duration, len(modes))
			failed := make([]int64, len(modes))
			done := 0
			for round := 0; done < b.N; round++ {
				n := min(chunk, b.N-done)
				for k := range modes {
					i := (k + round) % len(modes)
					var next, errs atomic.Int64
					var wg sync.WaitGroup
					start := time.Now()
					for range workers {
						wg.Add(1)
						go func() {
							defer wg.Done()
							for next.Add(1) <= int64(n) {
								if op.fn(stores[i]) != nil {
									errs.Add(1)
								}
							}
						}()
					}
					wg.Wait()
					spent[i] += time.Since(start)
					failed[i] += errs.Load()
				}
				done += n
			}
			for i, m := range modes {
				b.ReportMetric(float64(spent[i].Microseconds())/float64(b.N), m.name+"_µs/op")
				b.ReportMetric(float64(failed[i])/float64(b.N), m.name+"_errors/op")
			}
		})
	}
}
