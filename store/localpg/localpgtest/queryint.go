package localpgtest

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// kept is one connection per test and URL, closed in the test's cleanup.
var kept struct {
	sync.Mutex
	conns map[keptKey]*keptConn
}

type keptKey struct {
	t   testing.TB
	url string
}

type keptConn struct {
	sync.Mutex // one query at a time: a pgx.Conn is not safe for concurrent use
	conn       *pgx.Conn
}

// QueryInt runs sql, a query returning one integer, on url. Tests poll the
// database through it while they wait for a process to act, so it keeps
// one connection per test and URL for the test's lifetime instead of
// connecting per query: each connection costs the server a process start.
// A kept connection the server dropped (a restart, a terminated backend) is
// replaced and the query run again, which is safe as sql only reads.
func QueryInt(t testing.TB, url, sql string, args ...any) (int, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	kc := keptFor(t, url)
	kc.Lock()
	defer kc.Unlock()
	var n int
	for attempt := 1; ; attempt++ {
		fresh := kc.conn == nil
		if fresh {
			conn, err := pgx.Connect(ctx, url)
			if err != nil {
				return 0, err
			}
			kc.conn = conn
		}
		err := kc.conn.QueryRow(ctx, sql, args...).Scan(&n)
		if err == nil {
			return n, nil
		}
		if !kc.conn.IsClosed() || fresh || attempt == 2 {
			return 0, fmt.Errorf("%s: %w", sql, err)
		}
		kc.conn.Close(ctx)
		kc.conn = nil
	}
}

// keptFor returns t's entry for url, made at the first call with a cleanup
// that closes its connection.
func keptFor(t testing.TB, url string) *keptConn {
	kept.Lock()
	defer kept.Unlock()
	k := keptKey{t, url}
	if kc, ok := kept.conns[k]; ok {
		return kc
	}
	if kept.conns == nil {
		kept.conns = make(map[keptKey]*keptConn)
	}
	kc := &keptConn{}
	kept.conns[k] = kc
	t.Cleanup(func() {
		kept.Lock()
		delete(kept.conns, k)
		kept.Unlock()
		kc.Lock()
		defer kc.Unlock()
		if kc.conn != nil {
			kc.conn.Close(context.Background())
			kc.conn = nil
		}
	})
	return kc
}
