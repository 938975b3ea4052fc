package store_test

import (
	"fmt"
	"net"
	"strconv"
	"testing"
	"time"

	"example.com/pscmessages/store"
)

// TestWriteRetriedAfterConnectionReset: a pooled idle connection reset by
// something between the pool and the server (here a proxy) fails the next
// write before anything reached the server. That write is retried on a fresh
// connection: it succeeds on its first request and stores one row.
//
// The pool holds one connection (pool_max_conns=1), so the write cannot be
// handed a healthy one instead, and the test proves that the write ran twice:
// it acquired one connection more than the same write does without a reset.
func TestWriteRetriedAfterConnectionReset(t *testing.T) {
	ctx := testContext(t)
	name := fmt.Sprintf("s%d", dbSeq.Add(1))
	if err := cluster.CreateDatabase(ctx, name); err != nil {
		t.Fatal(err)
	}
	url := cluster.SuperuserURL(name)
	proxy := startResetProxy(t, net.JoinHostPort(cluster.Host(), strconv.Itoa(cluster.Port())))
	st, err := store.Open(ctx, store.Config{ConnString: proxy.via(t, url), Migrate: true, MaxConns: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	acquires := func() int64 { return st.Pool().Stat().AcquireCount() }
	// The first write may start background work (such as expiring old
	// idempotency keys) on the pool; wait until the pool is quiet.
	if _, err := st.Add(ctx, "first", ""); err != nil {
		t.Fatal(err)
	}
	for last, quiet := acquires(), 0; quiet < 3; {
		time.Sleep(100 * time.Millisecond)
		if now := acquires(); now != last || st.Pool().Stat().AcquiredConns() != 0 {
			last, quiet = now, 0
		} else {
			quiet++
		}
	}
	// What the same write costs without a reset.
	before := acquires()
	if _, err := st.Add(ctx, "control", "key-control"); err != nil {
		t.Fatal(err)
	}
	perWrite := acquires() - before
	// pgxpool pings a connection idle for over a second before handing it
	// out, which would find the reset itself and hide the write's retry. So
	// the reset and the write follow the previous write at once, and an
	// attempt that took a second or more does not count.
	const attempts = 5
	for attempt := range attempts {
		start := time.Now()
		if _, err := st.Add(ctx, fmt.Sprintf("warm-%d", attempt), ""); err != nil {
			t.Fatal(err)
		}
		conns := proxy.connections()
		if n := proxy.resetAll(); n != 1 {
			t.Fatalf("reset %d connections, want the pool's one", n)
		}
		content := fmt.Sprintf("after-reset-%d", attempt)
		before := acquires()
		a, err := st.Add(ctx, content, "key-"+content)
		elapsed := time.Since(start)
		if err != nil {
			t.Fatalf("the write after a connection reset failed: %v", err)
		}
		if a.ID == 0 || a.AlreadyStored || a.Content != content {
			t.Fatalf("the write after a connection reset: %+v", a)
		}
		if n := count(t, url, "SELECT count(*) FROM messages m JOIN idempotency_keys k ON k.message_id = m.id WHERE m.content = $1 AND k.key = $2", content, "key-"+content); n != 1 {
			t.Fatalf("%d rows for one write", n)
		}
		if proxy.connections() == conns {
			t.Fatal("the write opened no new connection: it never met the reset one")
		}
		if elapsed >= time.Second {
			t.Logf("attempt %d took %v: the pool may have pinged the connection first; again", attempt, elapsed)
			continue
		}
		if got := acquires() - before; got <= perWrite {
			t.Fatalf("the write acquired %d connections, as many as without a reset (%d): it was not retried", got, perWrite)
		} else {
			t.Logf("the write acquired %d connections, %d without a reset", got, perWrite)
		}
		return
	}
	t.Fatalf("no attempt in %d was quick enough to exercise the write's retry", attempts)
}
