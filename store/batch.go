package store

import (
	"cmp"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"go.opentelemetry.io/otel/trace"
)

// Group commit. One INSERT per request leaves a small machine's database
// waiting on a commit (and a round trip) per row. Instead one writer
// goroutine takes whatever requests are queued when it becomes free and
// stores them with one statement: at low load a request is written at once, on
// its own; under load the batch grows with the queue. Each caller is answered
// only after the statement holding its row has committed.
//
// One row never fails another. A row that can never be stored is refused
// before the batch (validate). A batch statement that still fails for a
// reason tied to a row (a data exception, a program limit, a constraint) is
// split in halves and each half tried again, down to the row that fails
// alone; that row gets an error wrapping ErrInvalid, the others commit. This
// costs at most 2n-1 statements for a batch of n rows. A fault of the
// database that fails every row (see rowTied and commit) is never blamed on
// a row: it is answered as the transient or internal error it is.
//
// Two instances never deadlock each other on keys: every batch claims its
// keys in one order (sorted by key), so no two batches can each wait for a
// key the other holds. A deadlock or serialization failure from elsewhere,
// and a key that another transaction committed after this statement looked,
// commit nothing and are retried up to maxConflictRetries times.
const (
	maxBatchRows  = 256
	maxBatchBytes = 4 << 20
	// maxConflictRetries is how many times a batch that failed with 40P01,
	// 40001 or 23505 is run again, after a jittered pause of up to
	// 20 ms × attempt.
	maxConflictRetries = 3
)

// MaxKeyBytes is the longest idempotency key Add accepts (1 KiB). Keys are
// indexed by btrees, whose rows are limited to about 2.7 kB; 1 KiB leaves
// room for any page layout and is more than a Pub/Sub topic (255 characters)
// and message id, or an Idempotency-Key (255 characters), need.
const MaxKeyBytes = 1 << 10

type writeRequest struct {
	content     string
	key         string
	fingerprint []byte           // sha256 of content, for keyed rows
	done        chan writeResult // buffered: the writer never blocks on a caller that left
	queuedAt    time.Time        // when telemetry is on
	span        trace.Span       // the request's span, when sampled (see observer.queued)
	spanCtx     trace.SpanContext
}

type writeResult struct {
	added       Added
	fingerprint []byte // of the content the key was first used for; nil when unknown
	err         error
}

type batcher struct {
	s     *Store
	queue chan *writeRequest
	stop  chan struct{}
	wg    sync.WaitGroup
	clean *cleaner
}

func newBatcher(s *Store) *batcher {
	b := &batcher{s: s, queue: make(chan *writeRequest), stop: make(chan struct{}), clean: newCleaner()}
	if s.cfg.ReplayOnly {
		b.clean.cancel() // never starts: see Config.ReplayOnly
	}
	b.wg.Add(1)
	go b.loop()
	return b
}

// add hands one row to a writer and waits for its commit. If ctx ends while the
// statement runs, the row may still be committed: only an answer means stored.
func (b *batcher) add(ctx context.Context, content, key string) (Added, error) {
	req := &writeRequest{content: content, key: key, done: make(chan writeResult, 1)}
	if err := validate(content, key); err != nil {
		return Added{}, err
	}
	if key != "" {
		sum := sha256.Sum256([]byte(content))
		req.fingerprint = sum[:]
	}
	b.s.obs.queued(ctx, req)
	select {
	case b.queue <- req:
	case <-b.stop:
		return Added{}, ErrClosed
	case <-ctx.Done():
		return Added{}, classify(ctx.Err())
	}
	select {
	case res := <-req.done:
		if res.err != nil {
			return Added{}, res.err
		}
		return res.added, nil
	case <-ctx.Done():
		return Added{}, classify(ctx.Err())
	}
}

func (b *batcher) close() {
	b.clean.cancel() // no cleanup holds Close up, nor starts after the last batch
	close(b.stop)
	b.wg.Wait()
	b.clean.stop()
}

func (b *batcher) loop() {
	defer b.wg.Done()
	for {
		var first *writeRequest
		select {
		case first = <-b.queue:
		case <-b.stop:
			return
		}
		batch, size := []*writeRequest{first}, len(first.content)
	drain:
		for len(batch) < maxBatchRows && size < maxBatchBytes {
			select {
			case req := <-b.queue:
				batch = append(batch, req)
				size += len(req.content)
			default:
				break drain
			}
		}
		b.s.obs.batchStarted(batch)
		b.write(batch)
		b.clean.maybeStart(b.s)
	}
}

// write stores one batch and answers every request in it.
func (b *batcher) write(batch []*writeRequest) {
	// A key repeated inside one batch is written once; its other requests
	// are answered as later requests with that key would be.
	first := make(map[string]*writeRequest, len(batch))
	var rows []*writeRequest
	for _, req := range batch {
		if req.key != "" {
			if _, ok := first[req.key]; ok {
				continue
			}
			first[req.key] = req
		}
		rows = append(rows, req)
	}
	// Deterministic lock order: see the comment at the top of this file.
	slices.SortStableFunc(rows, func(a, b *writeRequest) int { return cmp.Compare(a.key, b.key) })

	results := make(map[*writeRequest]writeResult, len(rows))
	b.commit(rows, results)
	for _, req := range batch {
		if res, ok := results[req]; ok {
			req.done <- res
			continue
		}
		// What the key was first used for decides, not the first
		// request's own answer: its retry may follow its reuse.
		res := results[first[req.key]]
		if res.fingerprint != nil {
			res = answerForStoredKey(res.added.Message, res.fingerprint, req)
		}
		req.done <- res
	}
}

// answerForStoredKey is the answer to a request whose key already stored message m
// with the given content fingerprint: the first answer, or ErrKeyReused.
// Either way the result keeps m and the fingerprint, for the requests that
// repeat the key in the same batch.
func answerForStoredKey(m Message, fingerprint []byte, req *writeRequest) writeResult {
	if string(fingerprint) != string(req.fingerprint) {
		return writeResult{err: ErrKeyReused, added: Added{Message: m}, fingerprint: fingerprint}
	}
	return writeResult{added: Added{AlreadyStored: true, Message: Message{
		ID: m.ID, Content: req.content, CreatedAt: m.CreatedAt, UpdatedAt: m.CreatedAt,
	}}, fingerprint: fingerprint}
}

// commit stores rows (sorted by key, distinct keys) and records one result
// per row, splitting the batch when one of its rows makes it fail.
//
// A row that fails alone is blamed (ErrInvalid: a 422, a dead letter) only
// when a probe then shows that the database accepts a known-good row of the
// same kind (see prober): otherwise a trigger, a check or a type on the
// database side refuses everything, and every row is answered ErrUnavailable
// (a 503, a redelivery). While a probe has just found such a fault, a
// failing batch is answered at once, without splitting it.
func (b *batcher) commit(rows []*writeRequest, results map[*writeRequest]writeResult) {
	kind := probeInsert
	for _, r := range rows {
		if r.key != "" {
			kind = probeInsertKeyed
			break
		}
	}
	since := time.Now()
	err := b.insertRetrying(rows, results)
	if err == nil {
		return
	}
	if rowTied(err) {
		if held := b.s.probe.heldFault(kind); held != nil {
			err = held
		} else {
			b.split(rows, results, err)
		}
	}
	var blamed []*writeRequest
	for _, r := range rows {
		res, ok := results[r]
		switch {
		case !ok:
			results[r] = writeResult{err: err}
		case errors.Is(res.err, ErrInvalid):
			blamed = append(blamed, r)
		}
	}
	if len(blamed) == 0 {
		return
	}
	if fault := b.s.probe.judge(context.Background(), kind, since, 0); fault != nil {
		for _, r := range blamed {
			results[r] = writeResult{err: fault}
		}
	}
}

// split answers rows after their statement failed with err: a batch that
// failed for a reason tied to a row is halved and each half tried again, down
// to the rows that fail alone.
func (b *batcher) split(rows []*writeRequest, results map[*writeRequest]writeResult, err error) {
	if rowTied(err) && len(rows) > 1 {
		mid := len(rows) / 2
		for _, half := range [][]*writeRequest{rows[:mid], rows[mid:]} {
			if err := b.insertRetrying(half, results); err != nil {
				b.split(half, results, err)
			}
		}
		return
	}
	switch {
	case isConflict(err):
		// Other transactions kept winning this key: transient, not the
		// row's fault.
		err = fmt.Errorf("%w: %w", ErrUnavailable, err)
	case rowTied(err):
		err = fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	for _, r := range rows {
		results[r] = writeResult{err: err}
	}
}

// insertRetrying runs insert, again after a conflict that committed nothing.
func (b *batcher) insertRetrying(rows []*writeRequest, results map[*writeRequest]writeResult) error {
	for attempt := 0; ; attempt++ {
		err := b.insert(rows, results)
		if err == nil || attempt == maxConflictRetries || !isConflict(err) {
			return err
		}
		b.s.obs.retried(rows, attempt+1, err)
		time.Sleep(time.Duration(rand.Int64N(int64(20*time.Millisecond) * int64(attempt+1))))
	}
}

// isConflict reports a failure caused by concurrent transactions, which
// commits nothing and may succeed when run again: a deadlock, a
// serialization failure, or a unique key that another transaction committed
// after this statement's snapshot.
func isConflict(err error) bool {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		return false
	}
	switch pgErr.Code {
	case "40P01", "40001", "23505":
		return true
	}
	return false
}

// rowTied reports a statement failure that one row's data can cause:
// SQLSTATE class 22 (data exception: bad encoding, value too long) except
// 2200H, 23 (integrity constraint; 23505 is retried first, see isConflict)
// and 54000 (program limit: index row too large).
//
// Not class XX (internal error, data corrupted, index corrupted), nor 2200H
// (a sequence reached its limit), nor the other 54 codes (a statement too
// complex): those fail every row alike, so splitting the batch would only
// blame each row in turn for the database's fault.
func rowTied(err error) bool {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		return false
	}
	switch {
	case pgErr.Code == "2200H":
		return false
	case pgErr.Code[:2] == "22", pgErr.Code[:2] == "23", pgErr.Code == "54000":
		return true
	}
	return false
}
