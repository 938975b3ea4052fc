package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// Message is one stored message. Rows written by the tutorial's app have a
// NULL content, which reads as "", and a CreatedAt of the migration time.
type Message struct {
	ID        int64     `json:"id"`
	Content   string    `json:"content"`
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
}

// Page bounds a listing.
type Page struct {
	// Before lists only messages with an id below it; 0 starts at the newest.
	Before int64
	// Limit is the page size; 0 means DefaultPageSize.
	Limit int
	// maxBytes bounds the content of a page; 0 means MaxPageBytes. Only
	// tests lower it, to page through large rows without writing megabytes.
	maxBytes int
}

// Page bounds for List.
const (
	DefaultPageSize = 100
	MaxPageSize     = 1000
	// MaxPageBytes is the most content a page holds (1 MiB). A page stops
	// before the message that would take it over, and gives Next for the
	// rest; its first message is always included, whatever its size, so a
	// page holds at most MaxPageBytes or one message. 1,000 messages of
	// 64 KB would otherwise be 65 MB in memory per request.
	MaxPageBytes = 1 << 20
)

// Listing is one page of messages, oldest first.
type Listing struct {
	Messages []Message
	// Next is the Before value of the page of older messages, 0 when none is left.
	Next int64
}

const messageColumns = "id, coalesce(content, ''), created_at, updated_at"

// listChunk reads the newest $2 messages below $1, newest first, along the
// primary key: one keyset chunk of a page.
const listChunk = `SELECT ` + messageColumns + ` FROM messages WHERE id < $1::bigint ORDER BY id DESC LIMIT $2`

// Sizing a page's chunks (see List). Until pages have shown otherwise a row
// is taken to weigh initialRowEstimate, the default content limit; a row is
// never taken to weigh less than minRowEstimate; and a chunk asks for at most
// maxChunk rows, so that a page of the default size is one statement while
// one that meets far larger rows than expected reads at most maxChunk-1 rows
// past its budget.
const (
	initialRowEstimate = 64 << 10
	minRowEstimate     = 256
	maxChunk           = 2*DefaultPageSize + 1
)

// List returns the newest messages below p.Before, oldest first, at most
// p.Limit of them and MaxPageBytes of content. It walks the primary key
// backwards, so a page costs the same on any table size, and it holds no
// more than the page in memory.
//
// A page is read in keyset chunks, and every chunk is read to its end:
// stopping a query midway would cancel it, and pgx closes a connection whose
// query was cancelled, so every page cut by its byte bound would cost the
// pool a new login (a TLS handshake and a token with IAM). A chunk asks for
// as many rows as the rest of the budget holds at the expected row size: the
// mean of this page's rows so far, or for its first chunk the size recent
// pages found (it rises at once and decays by an eighth per page). So a page
// of short messages is one statement, and a page reads its budget plus at
// most the rest of the chunk that overflowed it: one row when rows are the
// size expected, fewer than maxChunk rows at worst.
func (s *Store) List(ctx context.Context, p Page) (Listing, error) {
	limit := p.Limit
	if limit <= 0 {
		limit = DefaultPageSize
	}
	limit = min(limit, MaxPageSize)
	budget := p.maxBytes
	if budget <= 0 {
		budget = MaxPageBytes
	}
	before := p.Before
	if before <= 0 {
		before = 1 << 62
	}
	var out Listing
	err := s.read(ctx, func(ctx context.Context) error {
		out = Listing{}
		var msgs []Message
		size, done := 0, false
		estimate := max(s.rowEstimate.Load(), minRowEstimate)
		for cursor := before; !done; {
			// One row more than the page holds tells whether older
			// messages remain.
			want := min(limit+1-len(msgs), maxChunk)
			if len(msgs) > 0 {
				estimate = max(int64(size/len(msgs)), 1)
			}
			n := int(min(int64(want), 1+int64(max(budget-size, 0))/estimate))
			rows, err := s.pool.Query(ctx, listChunk, cursor, n)
			if err != nil {
				return err
			}
			got := 0
			for rows.Next() {
				got++
				if done {
					continue // read to the end, so the connection stays usable
				}
				m, err := scanMessage(rows)
				if err != nil {
					rows.Close()
					return err
				}
				cursor = m.ID
				if len(msgs) == limit || len(msgs) > 0 && size+len(m.Content) > budget {
					out.Next = msgs[len(msgs)-1].ID
					done = true
					continue
				}
				size += len(m.Content)
				msgs = append(msgs, m)
			}
			rows.Close()
			if err := rows.Err(); err != nil {
				return err
			}
			if got < n {
				done = true // no older messages
			}
		}
		if len(msgs) > 0 {
			mean := int64(size / len(msgs))
			old := s.rowEstimate.Load()
			s.rowEstimate.Store(max(mean, old-old/8))
		}
		for i, j := 0, len(msgs)-1; i < j; i, j = i+1, j-1 {
			msgs[i], msgs[j] = msgs[j], msgs[i]
		}
		out.Messages = msgs
		return nil
	})
	if err != nil {
		return Listing{}, fmt.Errorf("listing messages: %w", err)
	}
	return out, nil
}

// Get returns one message or ErrNotFound.
func (s *Store) Get(ctx context.Context, id int64) (Message, error) {
	return s.one(ctx, s.read, "getting message", "SELECT "+messageColumns+" FROM messages WHERE id = $1::bigint", id)
}

// Update replaces a message's content, or returns ErrNotFound. Content the
// database refuses gives an error wrapping ErrInvalid, as Add does, once a
// probe has shown that the database accepts other content (see prober);
// otherwise the refusal is the database's fault and the error wraps
// ErrUnavailable.
func (s *Store) Update(ctx context.Context, id int64, content string) (Message, error) {
	if err := validate(content, ""); err != nil {
		return Message{}, fmt.Errorf("updating message: %w", err)
	}
	since := time.Now()
	m, err := s.one(ctx, s.run, "updating message",
		"UPDATE messages SET content = $2, updated_at = now() WHERE id = $1::bigint RETURNING "+messageColumns,
		id, content)
	switch {
	case err == nil:
		s.probe.stored(probeUpdate, content)
	case rowTied(err):
		if fault := s.probe.judge(ctx, probeUpdate, since, id); fault != nil {
			return Message{}, fmt.Errorf("updating message: %w", fault)
		}
		return Message{}, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	return m, err
}

// Delete removes a message, or returns ErrNotFound.
func (s *Store) Delete(ctx context.Context, id int64) error {
	err := s.run(ctx, func(ctx context.Context) error {
		tag, err := s.pool.Exec(ctx, "DELETE FROM messages WHERE id = $1::bigint", id)
		if err == nil && tag.RowsAffected() == 0 {
			return ErrNotFound
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("deleting message %d: %w", id, err)
	}
	return nil
}

func (s *Store) one(ctx context.Context, run func(context.Context, func(context.Context) error) error, what, sql string, args ...any) (Message, error) {
	var m Message
	err := run(ctx, func(ctx context.Context) error {
		rows, err := s.pool.Query(ctx, sql, args...)
		if err != nil {
			return err
		}
		m, err = pgx.CollectExactlyOneRow(rows, scanMessage)
		if errors.Is(err, pgx.ErrNoRows) {
			return ErrNotFound
		}
		return err
	})
	if err != nil {
		return Message{}, fmt.Errorf("%s: %w", what, err)
	}
	return m, nil
}

func scanMessage(row pgx.CollectableRow) (Message, error) {
	var m Message
	err := row.Scan(&m.ID, &m.Content, &m.CreatedAt, &m.UpdatedAt)
	return m, err
}

// Added is the outcome of Add.
type Added struct {
	Message
	// AlreadyStored is true when the key had already stored this message
	// (an idempotent retry); Message is then the first answer given for the
	// key (its id and created_at, UpdatedAt equal to CreatedAt), whatever
	// happened to the row since. A key first used for different content is
	// not a retry: Add returns ErrKeyReused.
	AlreadyStored bool
}

// Add stores content, at most once per non-empty key, and returns only after
// the row is committed. Concurrent calls are coalesced into one INSERT.
//
// A key is remembered for idempotencyRetention. Within it, the same key with
// the same content is an idempotent retry (the first answer), and with other content
// ErrKeyReused, whatever happened to the row since. Content or a key that
// can never be stored (NUL, invalid UTF-8, a key over MaxKeyBytes) gives an
// error wrapping ErrInvalid.
func (s *Store) Add(ctx context.Context, content, key string) (Added, error) {
	a, err := s.writer.add(ctx, content, key)
	if err != nil {
		return Added{}, fmt.Errorf("adding message: %w", err)
	}
	return a, nil
}
