//go:build e2e || pgbouncer

package main

import (
	"io"
	"net/http"
	"testing"
	"time"
)

// TestBenchInstancesSmall runs the many-instance simulation at a small size
// and pins its promises, not its numbers: 4 processes against 3 connection
// slots fail only with 503 + Retry-After and lose no acknowledged write;
// the same 4 through PgBouncer answer every request with a 2xx.
func TestBenchInstancesSmall(t *testing.T) {
	t.Setenv("DATABASE_URL", "")
	cfg := instancesConfig{procs: 4, conc: 8, maxConns: 2, maxServer: 6, poolSize: 3,
		duration: 700 * time.Millisecond, warmup: 300 * time.Millisecond, rounds: 1, progress: io.Discard}
	rows, err := benchInstances(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 4 {
		t.Fatalf("%d phases, want 4", len(rows))
	}
	for _, r := range rows {
		if r.ok == 0 || r.missing != 0 || r.transport != 0 || r.noRetry != 0 {
			t.Errorf("%s: %d ok in the window, %d acknowledged but missing, %d without an answer, %d 503s without Retry-After",
				r.name, r.ok, r.missing, r.transport, r.noRetry)
		}
		for code, n := range r.byStatus {
			if code != http.StatusServiceUnavailable {
				t.Errorf("%s: %d answers with status %d", r.name, n, code)
			}
		}
	}
	if rows[2].byStatus[http.StatusServiceUnavailable] == 0 {
		t.Errorf("%s: 4 processes shared 3 connection slots without a 503", rows[2].name)
	}
	for _, i := range []int{1, 3} {
		if len(rows[i].byStatus) != 0 || rows[i].maxBackend > cfg.poolSize {
			t.Errorf("%s: non-2xx %v, %d server connections (pool %d)", rows[i].name, rows[i].byStatus, rows[i].maxBackend, cfg.poolSize)
		}
	}
}
