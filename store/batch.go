package store

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
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

// insertBatch inserts the rows in input order. Ids are drawn from the
// sequence in a CTE that is evaluated once, so each input row's id is known
// whether it was inserted or skipped for an existing idempotency key.
const insertBatch = `
WITH input AS (
	SELECT t.ord, t.content, t.key, nextval('messages_id_seq'::regclass) AS id
	FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS t(content, key, ord)
	ORDER BY t.ord
), ins AS (
	INSERT INTO messages (id, content, idempotency_key)
	SELECT id, content, key FROM input ORDER BY ord
	ON CONFLICT (idempotency_key) DO NOTHING
	RETURNING id, created_at, updated_at
)
SELECT ins.id, ins.created_at, ins.updated_at
FROM input LEFT JOIN ins ON ins.id = input.id
ORDER BY input.ord`

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
	out := make([]Added, len(rows))
	var replayKeys []string
	err := b.s.run(ctx, func(ctx context.Context) error {
		replayKeys = replayKeys[:0]
		res, err := b.s.pool.Query(ctx, insertBatch, contents, keys)
		if err != nil {
			return err
		}
		defer res.Close()
		i := 0
		for res.Next() {
			var id *int64
			var created, updated *time.Time
			if err := res.Scan(&id, &created, &updated); err != nil {
				return err
			}
			if i >= len(rows) {
				return errors.New("insert returned more rows than it was given")
			}
			if id == nil {
				out[i] = Added{Replayed: true}
				replayKeys = append(replayKeys, rows[i].key)
			} else {
				out[i] = Added{Message: Message{ID: *id, Content: rows[i].content, CreatedAt: *created, UpdatedAt: *updated}}
			}
			i++
		}
		if err := res.Err(); err != nil {
			return err
		}
		if i != len(rows) {
			return fmt.Errorf("insert returned %d rows for %d messages", i, len(rows))
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	results := make([]writeResult, len(rows))
	for i := range out {
		results[i].added = out[i]
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
