//go:build e2e || pgbouncer

package localpg_test

import (
	"testing"

	"github.com/jackc/pgx/v5"

	"example.com/pscmessages/store/localpg"
	"example.com/pscmessages/store/localpg/localpgtest"
)

// TestBouncerPoolsTransactions: two clients of a transaction-mode pooler
// with a server pool of 1 share one server session (the same backend pid),
// which no direct connection could; and the pooler comes back on its port
// after Stop and Start.
func TestBouncerPoolsTransactions(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	c := localpgtest.Start(t, localpg.Options{})
	b := localpgtest.StartBouncer(t, localpg.BouncerOptions{Upstream: c, DefaultPoolSize: 1})
	url := b.URL("postgres", "", "postgres", "default_query_exec_mode=simple_protocol")
	pids := make([]int32, 2)
	for i := range pids {
		conn, err := pgx.Connect(ctx, url)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(ctx)
		if err := conn.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pids[i]); err != nil {
			t.Fatal(err)
		}
	}
	if pids[0] != pids[1] {
		t.Errorf("two clients ran on backends %d and %d; a pool of 1 in transaction mode shares one", pids[0], pids[1])
	}
	if v, err := query[string](ctx, url, "SHOW server_version"); err != nil || v == "" {
		t.Fatalf("through the pooler: %q, %v", v, err)
	}

	port := b.Port()
	if err := b.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := query[int](ctx, url, "SELECT 1"); err == nil {
		t.Fatal("a stopped pooler answered")
	}
	if err := b.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if b.Port() != port {
		t.Fatalf("port %d after a restart, was %d", b.Port(), port)
	}
	if n, err := query[int](ctx, url, "SELECT 1"); err != nil || n != 1 {
		t.Fatalf("after the restart: %d, %v", n, err)
	}
}
