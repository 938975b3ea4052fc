package store

import (
	"context"
	"fmt"
	"sync"
)

// Group commit. One INSERT per request leaves a small machine's database
// waiting on a commit (and a round trip) per row. Instead one writer
// goroutine takes whatever requests are queued when it becomes free and
// stores them with one statement: at low load a request is written at once, on
// its own; under load the batch grows with the queue. Each caller is answered
// only after the statement holding its row has committed.
const (
	maxBatchRows  = 256
	maxBatchBytes = 4 << 20
)

type writeRequest struct {
	content string
	key     string
	done    chan writeResult // buffered: the writer never blocks on a caller that left
}

type writeResult struct {
	added Added
	err   error
}

type batcher struct {
	s     *Store
	queue chan *writeRequest
	stop  chan struct{}
	wg    sync.WaitGroup
}

func newBatcher(s *Store) *batcher {
	b := &batcher{s: s, queue: make(chan *writeRequest), stop: make(chan struct{})}
	b.wg.Add(1)
	go b.loop()
	return b
}

// add hands one row to a writer and waits for its commit. If ctx ends while the
// statement runs, the row may still be committed: only an answer means stored.
func (b *batcher) add(ctx context.Context, content, key string) (Added, error) {
	req := &writeRequest{content: content, key: key, done: make(chan writeResult, 1)}
	select {
	case b.queue <- req:
	case <-b.stop:
		return Added{}, ErrClosed
	case <-ctx.Done():
		return Added{}, classify(ctx.Err())
	}
	select {
	case res := <-req.done:
		return res.added, res.err
	case <-ctx.Done():
		return Added{}, classify(ctx.Err())
	}
}

func (b *batcher) close() {
	close(b.stop)
	b.wg.Wait()
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
		b.write(batch)
	}
}

// insertBatch is one plain multi-row INSERT: the cheapest statement that
// stores a batch (a CTE that numbers the rows and joins them back to their ids
// cost the database about a fifth more per batch). PostgreSQL does not promise
// that RETURNING follows the input order, so each returned row carries what
// identifies it: its key, or for a row without one, its content. Rows without
// a key and with equal content are interchangeable: they are inserted by one
// statement, so their timestamps are equal too. A row whose key already
// exists returns nothing.
const insertBatch = `
INSERT INTO messages (content, idempotency_key)
SELECT * FROM unnest($1::text[], $2::text[])
ON CONFLICT (idempotency_key) DO NOTHING
RETURNING id, content, idempotency_key, created_at, updated_at`

const selectByKeys = `SELECT idempotency_key, ` + messageColumns + ` FROM messages WHERE idempotency_key = ANY($1::text[])`

// write stores one batch and answers every request in it.
func (b *batcher) write(batch []*writeRequest) {
	// A key repeated inside one batch is written once; its other requests
	// become replays of that row.
	first := make(map[string]int, len(batch))
	var rows []*writeRequest
	dupOf := make([]int, len(batch)) // index into rows
	for i, req := range batch {
		if j, ok := first[req.key]; ok && req.key != "" {
			dupOf[i] = j
			continue
		}
		if req.key != "" {
			first[req.key] = len(rows)
		}
		dupOf[i] = len(rows)
		rows = append(rows, req)
	}

	results, err := b.insert(rows)
	for i, req := range batch {
		if err != nil {
			req.done <- writeResult{err: err}
			continue
		}
		res := results[dupOf[i]]
		if rows[dupOf[i]] != req {
			res.added.Replayed = true
		}
		req.done <- res
	}
}

// insert returns one result per row. The error is the statement's; a failed
// lookup of replayed keys fails only those rows, since the others are committed.
func (b *batcher) insert(rows []*writeRequest) ([]writeResult, error) {
	contents := make([]string, len(rows))
	keys := make([]*string, len(rows))
	for i, r := range rows {
		contents[i] = r.content
		if r.key != "" {
			keys[i] = &r.key
		}
	}
	// The statement's deadline is the store's, not one caller's: the batch
	// belongs to all of them.
	ctx := context.Background()
	var stored []insertedRow
	err := b.s.run(ctx, func(ctx context.Context) error {
		stored = stored[:0]
		res, err := b.s.pool.Query(ctx, insertBatch, contents, keys)
		if err != nil {
			return err
		}
		defer res.Close()
		for res.Next() {
			var r insertedRow
			if err := res.Scan(&r.m.ID, &r.m.Content, &r.key, &r.m.CreatedAt, &r.m.UpdatedAt); err != nil {
				return err
			}
			stored = append(stored, r)
		}
		return res.Err()
	})
	if err != nil {
		return nil, err
	}
	out, err := matchInserted(rows, stored)
	if err != nil {
		return nil, err
	}
	results := make([]writeResult, len(rows))
	var replayKeys []string
	for i, a := range out {
		results[i].added = a
		if a.Replayed {
			replayKeys = append(replayKeys, rows[i].key)
		}
	}
	if len(replayKeys) == 0 {
		return results, nil
	}
	existing, err := b.s.byKeys(ctx, replayKeys)
	for i, r := range rows {
		if !out[i].Replayed {
			continue
		}
		m, ok := existing[r.key]
		switch {
		case err != nil:
			results[i] = writeResult{err: err}
		case !ok:
			// Deleted between the conflict and this read; a retry inserts anew.
			results[i] = writeResult{err: fmt.Errorf("%w: message for an idempotency key vanished during the write", ErrUnavailable)}
		default:
			results[i].added.Message = m
		}
	}
	return results, nil
}

// insertedRow is one row that insertBatch returned.
type insertedRow struct {
	m   Message
	key *string
}

// matchInserted gives each input row the stored row that is its own, or marks
// it replayed when its key stored nothing. The rows it was given are
// distinct in key (write folds repeated keys), and every keyless row is stored,
// so the match is exact. It first follows the input order, which is what
// PostgreSQL does in practice, and matches by key and content only when the
// order differs.
func matchInserted(rows []*writeRequest, stored []insertedRow) ([]Added, error) {
	out := make([]Added, len(rows))
	j := 0
	inOrder := true
	for i, r := range rows {
		if j < len(stored) && isRowOf(stored[j], r) {
			out[i] = Added{Message: stored[j].m}
			j++
			continue
		}
		if r.key == "" {
			inOrder = false
			break
		}
		out[i] = Added{Replayed: true}
	}
	if inOrder && j == len(stored) {
		return out, nil
	}

	byKey := make(map[string]int, len(stored))
	byContent := make(map[string][]int)
	for k, st := range stored {
		if st.key != nil {
			byKey[*st.key] = k
		} else {
			byContent[st.m.Content] = append(byContent[st.m.Content], k)
		}
	}
	matched := 0
	for i, r := range rows {
		if r.key != "" {
			if k, ok := byKey[r.key]; ok {
				out[i] = Added{Message: stored[k].m}
				matched++
			} else {
				out[i] = Added{Replayed: true}
			}
			continue
		}
		same := byContent[r.content]
		if len(same) == 0 {
			return nil, fmt.Errorf("insert returned no row for a message without a key")
		}
		out[i] = Added{Message: stored[same[0]].m}
		byContent[r.content] = same[1:]
		matched++
	}
	if matched != len(stored) {
		return nil, fmt.Errorf("insert returned %d rows, %d of them unmatched", len(stored), len(stored)-matched)
	}
	return out, nil
}

// isRowOf reports whether the stored row st is the one that input r wrote.
func isRowOf(st insertedRow, r *writeRequest) bool {
	if r.key != "" {
		return st.key != nil && *st.key == r.key
	}
	return st.key == nil && st.m.Content == r.content
}

func (s *Store) byKeys(ctx context.Context, keys []string) (map[string]Message, error) {
	found := make(map[string]Message, len(keys))
	err := s.read(ctx, func(ctx context.Context) error {
		rows, err := s.pool.Query(ctx, selectByKeys, keys)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var key string
			var m Message
			if err := rows.Scan(&key, &m.ID, &m.Content, &m.CreatedAt, &m.UpdatedAt); err != nil {
				return err
			}
			found[key] = m
		}
		return rows.Err()
	})
	return found, err
}
