package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/puddle/v2"
)

var (
	// ErrUnavailable means the database could not be reached or did not answer
	// in time. It is transient: the same call may succeed later.
	ErrUnavailable = errors.New("database unavailable")
	// ErrNotFound means no message has the requested id.
	ErrNotFound = errors.New("message not found")
	// ErrSchema means the schema is missing, out of date or not usable by the
	// configured role (for example when migrations are off and nobody ran them).
	ErrSchema = errors.New("database schema not ready")
	// ErrClosed means the store was closed.
	ErrClosed = errors.New("store closed")
	// ErrKeyReused means an idempotency key (an Idempotency-Key header or a
	// Pub/Sub topic and message id) was first used for a different message.
	// It is permanent: retrying the same call gives the same answer.
	ErrKeyReused = errors.New("idempotency key already used for a different message")
	// ErrInvalid means one row can never be stored as given (for example a
	// key that is too long or holds a NUL byte). It is permanent and concerns
	// that row alone.
	ErrInvalid = errors.New("message cannot be stored")
)

// iamRefusedRetryDelay is how long Open waits before logging in again after
// the server refused an IAM token, to tell a token race from a lasting refusal.
const iamRefusedRetryDelay = time.Second

// Store is a pool of connections plus the group-commit writer. It is safe for
// concurrent use.
type Store struct {
	pool      *pgxpool.Pool
	cfg       Config
	writer    *batcher
	probe     *prober
	obs       *observer // nil when telemetry is off
	closeOnce sync.Once
	// rowEstimate is the mean content size of the rows of recent pages,
	// which sizes the first chunk of the next page (see List).
	rowEstimate atomic.Int64
}

// Open creates the pool, connects once to migrate or to check the schema, and
// starts the writer. A failure leaves nothing open behind it.
func Open(ctx context.Context, cfg Config) (*Store, error) {
	pc, err := cfg.loginConfig(ctx)
	if err != nil {
		return nil, err
	}
	obs := newObserver(pc)
	pool, err := pgxpool.NewWithConfig(context.Background(), pc)
	if err != nil {
		return nil, fmt.Errorf("creating pool: %w", err)
	}
	s := &Store{pool: pool, cfg: cfg, obs: obs}
	s.probe = &prober{s: s}
	s.rowEstimate.Store(initialRowEstimate)
	sctx, endPrepare := obs.operation(ctx, "schema setup")
	err = s.prepareSchema(sctx)
	if err != nil && cfg.IAMAuth && isPasswordRefused(err) {
		// The token may have raced a rotation: one more login, a moment
		// later, tells a race from a token that will never be accepted.
		select {
		case <-time.After(iamRefusedRetryDelay):
			err = s.prepareSchema(sctx)
		case <-ctx.Done():
		}
	}
	endPrepare(err)
	if err != nil {
		pool.Close()
		return nil, classifyAs(err, true)
	}
	// One writer: while its batch commits, the next batch gathers. A second
	// writer halves the batches, and the CPU per row of a small batched
	// INSERT is no lower than that of single INSERTs, so two writers are
	// slower, as `go run ./cmd/pscbench throughput` shows
	// (cmd/pscbench/BENCHMARKS.md, "One writer").
	s.writer = newBatcher(s)
	obs.observePool(pool)
	return s, nil
}

// Close stops the writer (pending writes finish first) and closes the pool.
func (s *Store) Close() {
	s.closeOnce.Do(func() {
		s.writer.close()
		s.obs.close()
		s.pool.Close()
	})
}

// run executes a write with the query deadline and retries it once on a fresh
// connection when it failed before anything reached the server.
func (s *Store) run(ctx context.Context, fn func(context.Context) error) error {
	return s.attempt(ctx, fn, pgconn.SafeToRetry)
}

// read is run for statements without side effects: those may also be retried
// after a connection died mid-statement (e.g. terminated by a restart).
func (s *Store) read(ctx context.Context, fn func(context.Context) error) error {
	return s.attempt(ctx, fn, isTransient)
}

func (s *Store) attempt(ctx context.Context, fn func(context.Context) error, retry func(error) bool) error {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.queryTimeout())
	defer cancel()
	err := fn(ctx)
	if err != nil && ctx.Err() == nil && retry(err) {
		err = fn(ctx)
	}
	// A warm IAM pool that gets a refused password on a new connection
	// has most likely raced a token rotation: transient there.
	return classifyAs(err, !s.cfg.IAMAuth)
}

// classify wraps transient failures in ErrUnavailable so callers can answer 503
// or ask for redelivery, and a closed pool in ErrClosed; other errors pass
// through unchanged.
func classify(err error) error {
	if errors.Is(err, puddle.ErrClosedPool) && !errors.Is(err, ErrClosed) {
		// A request that got the store before Close ran its statement
		// after it: pgxpool answers puddle's "closed pool".
		return fmt.Errorf("%w: %w", ErrClosed, err)
	}
	if p := permanent(err, false); p != nil {
		return p
	}
	if err == nil || errors.Is(err, ErrUnavailable) {
		return err
	}
	if isTransient(err) {
		return fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	return err
}

func isTransient(err error) bool {
	if errors.Is(err, ErrPermanent) {
		return false
	}
	if errors.Is(err, context.DeadlineExceeded) || pgconn.Timeout(err) || pgconn.SafeToRetry(err) {
		return true
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch pgErr.Code[:2] {
		case "08", // connection exception
			"53", // insufficient resources, e.g. too many connections
			"57": // operator intervention: admin shutdown, cannot connect now
			return true
		}
		// A rotated IAM token can race with a login; the next login uses a new one.
		return pgErr.Code == "28P01" || pgErr.Code == "40001" || pgErr.Code == "40P01"
	}
	var connectErr *pgconn.ConnectError
	var netErr net.Error
	return errors.As(err, &connectErr) || errors.As(err, &netErr) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.ECONNREFUSED) ||
		errors.Is(err, syscall.EPIPE) ||
		errors.Is(err, tokenError)
}

// loginConfig is poolConfig plus, in IAM mode, the token login and derived user.
func (c Config) loginConfig(ctx context.Context) (*pgxpool.Config, error) {
	pc, err := c.poolConfig()
	if err != nil {
		return nil, err
	}
	if c.IAMAuth {
		if err := configureIAM(ctx, &c, pc); err != nil {
			return nil, err
		}
	}
	return pc, nil
}
