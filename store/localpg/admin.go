package localpg

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// adminIdle is how long Exec's connection stays open unused.
const adminIdle = 10 * time.Second

// admin is the connection Exec runs on. Callers set a cluster up with a
// series of Execs (a database per test, roles, grants), and a new connection
// for each costs the server a process start, more than most of the
// statements. It is checked with a ping before each reuse, so a server
// stopped, restarted or killed since is met with a new connection, and
// closed once idle for adminIdle, so that it does not stay among the
// clients of a server its caller goes on using.
type admin struct {
	mu       sync.Mutex
	conn     *pgx.Conn
	url      string // what conn is connected to
	lastUse  time.Time
	idleStop *idleTimer
}

func (a *admin) exec(ctx context.Context, url, sql string, args ...any) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.conn != nil && (a.url != url || a.conn.Ping(ctx) != nil) {
		a.closeLocked()
	}
	if a.conn == nil {
		conn, err := pgx.Connect(ctx, url)
		if err != nil {
			return fmt.Errorf("localpg: %w", err)
		}
		a.conn, a.url = conn, url
	}
	_, err := a.conn.Exec(ctx, sql, args...)
	// A statement that failed inside a transaction it opened leaves the
	// session aborted, which a ping does not notice: such a connection is
	// not reused.
	if a.conn.IsClosed() || a.conn.PgConn().TxStatus() != 'I' {
		a.closeLocked()
	} else {
		a.lastUse = time.Now()
		if a.idleStop == nil {
			a.armIdle(adminIdle)
		}
	}
	if err != nil {
		return fmt.Errorf("localpg: %w", err)
	}
	return nil
}

// idleTimer is one arming of the idle close; closeIdle acts only for the
// arming still current, so a timer that fired while the connection was
// being closed or replaced does nothing.
type idleTimer struct{ t *time.Timer }

func (a *admin) armIdle(after time.Duration) {
	it := &idleTimer{}
	it.t = time.AfterFunc(after, func() { a.closeIdle(it) })
	a.idleStop = it
}

// closeIdle closes the connection once unused for adminIdle.
func (a *admin) closeIdle(it *idleTimer) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.idleStop != it {
		return
	}
	a.idleStop = nil
	if a.conn == nil {
		return
	}
	if left := adminIdle - time.Since(a.lastUse); left > 0 {
		a.armIdle(left)
		return
	}
	a.closeLocked()
}

// close closes the connection unless an Exec or the idle timer holds it
// (an Exec may be waiting for a server that is gone): then that Exec's
// failure or the idle timer closes it.
func (a *admin) close() {
	if !a.mu.TryLock() {
		return
	}
	defer a.mu.Unlock()
	a.closeLocked()
}

func (a *admin) closeLocked() {
	if a.idleStop != nil {
		a.idleStop.t.Stop()
		a.idleStop = nil
	}
	if a.conn != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		a.conn.Close(ctx)
		a.conn = nil
	}
}
