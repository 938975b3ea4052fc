package function

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"example.com/pscmessages/store"
)

// lazyStore opens the store on first use. Concurrent first callers wait for
// one attempt; a failure is not kept forever but retried after a backoff that
// grows to maxBackoff, so a dead database is not hammered and a revived one is
// picked up without a restart.
type lazyStore struct {
	open func(context.Context) (*store.Store, error)
	log  *slog.Logger

	st  atomic.Pointer[store.Store]
	sem chan struct{} // one opener at a time; a channel so waiters can give up

	// Guarded by sem.
	failures int
	retryAt  time.Time
	lastErr  error
	closed   bool // set by close: no pool is opened after it
	// lastPermanent is the message of the last permanent failure logged,
	// so that it is logged at Error once per cause, not on every attempt.
	lastPermanent string
}

const (
	minBackoff = 200 * time.Millisecond
	maxBackoff = 10 * time.Second
)

// openTimeout bounds one attempt to open the pool, migrations included
// (DB_MIGRATE=true). Migrations that scan large tables are never applied
// under it (migrations.InlineBytes). A variable for tests.
var openTimeout = 30 * time.Second

// unavailableError carries how long a caller should wait before retrying.
type unavailableError struct {
	retryAfter time.Duration
	err        error
}

func (e *unavailableError) Error() string { return e.err.Error() }
func (e *unavailableError) Unwrap() error { return e.err }

func (l *lazyStore) get(ctx context.Context) (*store.Store, error) {
	if st := l.st.Load(); st != nil {
		return st, nil
	}
	select {
	case l.sem <- struct{}{}:
	case <-ctx.Done():
		return nil, fmt.Errorf("%w: waiting for the pool: %w", store.ErrUnavailable, ctx.Err())
	}
	defer func() { <-l.sem }()
	if st := l.st.Load(); st != nil {
		return st, nil
	}
	if l.closed {
		return nil, store.ErrClosed
	}
	if wait := time.Until(l.retryAt); wait > 0 {
		return nil, &unavailableError{retryAfter: wait, err: l.lastErr}
	}
	// Not the request's context: the pool outlives the request that opened it.
	openCtx, cancel := context.WithTimeout(context.Background(), openTimeout)
	defer cancel()
	st, err := l.open(openCtx)
	if err != nil {
		l.failures++
		backoff := min(minBackoff<<min(l.failures-1, 16), maxBackoff)
		l.retryAt = time.Now().Add(backoff)
		// The error table's class: what retrying cannot heal.
		permanent := isMisconfigured(err)
		if !permanent && !errors.Is(err, store.ErrUnavailable) {
			err = fmt.Errorf("%w: %w", store.ErrUnavailable, err)
		}
		l.lastErr = err
		if permanent {
			// Retrying will not heal it: said once per cause, at Error,
			// and again only when the cause changes or after a success.
			level := slog.LevelError
			if err.Error() == l.lastPermanent {
				level = slog.LevelDebug
			}
			l.lastPermanent = err.Error()
			msg := "cannot use the database; fix the configuration (retrying every " + maxBackoff.String() + " meanwhile)"
			if errors.Is(err, store.ErrMigrationOffline) {
				msg = "cannot use the database until a pending migration is applied with `go run ./cmd/pscmessages migrate` (checking again every " + maxBackoff.String() + ")"
			}
			l.log.Log(ctx, level, msg, "error", err.Error(), "attempt", l.failures)
		} else {
			l.lastPermanent = ""
			l.log.Warn("database unavailable; will retry", "error", causeText(err), "attempt", l.failures, "retry_in", backoff.String())
		}
		return nil, &unavailableError{retryAfter: backoff, err: err}
	}
	if l.failures > 0 {
		l.log.Info("database opened", "after_attempts", l.failures+1)
	}
	l.failures = 0
	l.lastPermanent = ""
	l.st.Store(st)
	return st, nil
}

// close waits for an open in progress, so its pool is closed too, and keeps
// later callers from opening another.
func (l *lazyStore) close() {
	l.sem <- struct{}{}
	defer func() { <-l.sem }()
	l.closed = true
	if st := l.st.Swap(nil); st != nil {
		st.Close()
	}
}
