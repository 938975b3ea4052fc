package store

import (
	"context"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"
)

// validate refuses, before any batch, a row PostgreSQL could never store:
// text with NUL or invalid UTF-8, and a key too long for a btree.
func validate(content, key string) error {
	switch {
	case len(key) > MaxKeyBytes:
		return fmt.Errorf("%w: idempotency key of %d bytes; the limit is %d", ErrInvalid, len(key), MaxKeyBytes)
	case !utf8.ValidString(key) || strings.IndexByte(key, 0) >= 0:
		return fmt.Errorf("%w: idempotency key holds NUL or invalid UTF-8", ErrInvalid)
	case !utf8.ValidString(content) || strings.IndexByte(content, 0) >= 0:
		return fmt.Errorf("%w: content holds NUL or invalid UTF-8", ErrInvalid)
	}
	return nil
}

// insertKeyless stores a batch without keys. Ids are drawn in the statement
// and each row's answer is its own input position's id, so no answer depends
// on the order or the matching of returned rows. created_at defaults to now(),
// the transaction's start, which the statement also returns.
const insertKeyless = `
WITH fresh AS (
    SELECT n, content, nextval('messages_id_seq') AS id
    FROM unnest($1::text[]) WITH ORDINALITY AS t(content, n)
), inserted AS (
    INSERT INTO messages (id, content, created_at, updated_at)
    SELECT id, content, now(), now() FROM fresh
)
SELECT n, id, now(), NULL::bytea, true FROM fresh`

// insertKeyed stores a batch with keys (and perhaps keyless rows too), in one
// statement:
//
//   - known: what each key was first used for, as this statement sees it:
//     its idempotency_keys record.
//   - claimed: a record for every key not known, with an id drawn for it
//     only then, so retries burn no ids. Inserted in input order, which is
//     key order. A key that another transaction is storing waits for it and
//     then claims nothing.
//   - fresh, inserted: a message for every claimed key and every keyless row.
//
// The key lives in idempotency_keys alone: messages carries no copy of it,
// so that a key's expiry deletes one small record and never rewrites the
// message (see 007_retire_message_keys.sql).
//
// The arrays are read through (SELECT $n) so that the planner cannot see
// their length: then a custom plan costs what the generic one does, and after
// five executions PostgreSQL keeps the generic plan of the prepared
// statement. Planned afresh each time, this statement costs more to plan than
// to run for a small batch (figures in cmd/pscbench/BENCHMARKS.md).
//
// It returns, per input position n, the id, created_at and, for a known key,
// the fingerprint of what it first stored. A key claimed by a transaction
// that committed after this statement began returns nothing: lookupKeys reads
// it afterwards.
const insertKeyed = `
WITH input AS (
    SELECT * FROM unnest((SELECT $1::text[]), (SELECT $2::text[]), (SELECT $3::bytea[]))
        WITH ORDINALITY AS t(content, key, fingerprint, n)
), known AS (
    SELECT k.key, k.fingerprint, k.message_id, k.created_at
    FROM idempotency_keys k WHERE k.key IN (SELECT key FROM input)
), claimed AS (
    INSERT INTO idempotency_keys (key, fingerprint, message_id, created_at)
    SELECT i.key, i.fingerprint, nextval('messages_id_seq'), now()
    FROM input i WHERE i.key IS NOT NULL AND NOT EXISTS (SELECT FROM known k WHERE k.key = i.key)
    ORDER BY i.n
    ON CONFLICT (key) DO NOTHING
    RETURNING key, message_id
), fresh AS (
    SELECT i.n, i.content,
        CASE WHEN i.key IS NULL THEN nextval('messages_id_seq') ELSE c.message_id END AS id
    FROM input i LEFT JOIN claimed c ON c.key = i.key
    WHERE i.key IS NULL OR c.key IS NOT NULL
), inserted AS (
    INSERT INTO messages (id, content, created_at, updated_at)
    SELECT id, content, now(), now() FROM fresh ORDER BY n
)
SELECT n, id, now(), NULL::bytea, true FROM fresh
UNION ALL
SELECT i.n, k.message_id, k.created_at, k.fingerprint, false FROM input i JOIN known k ON k.key = i.key`

// lookupKeys reads what keys were first used for, as insertKeyed's known does.
const lookupKeys = `
SELECT k.key, k.fingerprint, k.message_id, k.created_at
FROM idempotency_keys k WHERE k.key = ANY($1::text[])`

// insert stores rows with one statement and records a result for each. It
// returns the statement's error and records nothing when that fails; once
// the statement has succeeded every row it stored is answered from the
// statement's own numbering, so no later failure can fail a committed row.
func (b *batcher) insert(rows []*writeRequest, results map[*writeRequest]writeResult) error {
	contents := make([]string, len(rows))
	keys := make([]*string, len(rows))
	fingerprints := make([][]byte, len(rows))
	keyed := false
	for i, r := range rows {
		contents[i] = r.content
		if r.key != "" {
			keys[i], fingerprints[i], keyed = &r.key, r.fingerprint, true
		}
	}
	sql, args := insertKeyless, []any{contents}
	if keyed {
		sql, args = insertKeyed, []any{contents, keys, fingerprints}
	}
	type answer struct {
		id          int64
		createdAt   time.Time
		fingerprint []byte
		stored      bool
	}
	answers := make([]*answer, len(rows))
	// The statement's deadline is the store's, not one caller's: the batch
	// belongs to all of them (ctx only carries its span).
	ctx, endSpan := b.s.obs.statement(rows)
	err := b.s.run(ctx, func(ctx context.Context) error {
		clear(answers)
		res, err := b.s.pool.Query(ctx, sql, args...)
		if err != nil {
			return err
		}
		defer res.Close()
		for res.Next() {
			var n int64
			var a answer
			if err := res.Scan(&n, &a.id, &a.createdAt, &a.fingerprint, &a.stored); err != nil {
				return err
			}
			if n < 1 || int(n) > len(rows) {
				return fmt.Errorf("insert answered for row %d of %d", n, len(rows))
			}
			answers[n-1] = &a
		}
		return res.Err()
	})
	endSpan(err)
	if err != nil {
		return err
	}
	kind := probeInsert
	if keyed {
		kind = probeInsertKeyed
	}
	b.s.probe.stored(kind, contents[0])
	var missing []string
	for i, r := range rows {
		a := answers[i]
		switch {
		case a == nil:
			missing = append(missing, r.key)
		case a.stored:
			results[r] = writeResult{fingerprint: r.fingerprint, added: Added{Message: Message{
				ID: a.id, Content: r.content, CreatedAt: a.createdAt, UpdatedAt: a.createdAt,
			}}}
		default:
			results[r] = answerForStoredKey(Message{ID: a.id, CreatedAt: a.createdAt}, a.fingerprint, r)
		}
	}
	if len(missing) > 0 {
		b.resolveRaced(rows, missing, results)
	}
	return nil
}

// resolveRaced answers the rows whose keys another transaction stored while
// the batch ran. They stored nothing, so an error here fails only them.
func (b *batcher) resolveRaced(rows []*writeRequest, keys []string, results map[*writeRequest]writeResult) {
	type record struct {
		m           Message
		fingerprint []byte
	}
	found := make(map[string]record, len(keys))
	err := b.s.read(context.Background(), func(ctx context.Context) error {
		res, err := b.s.pool.Query(ctx, lookupKeys, keys)
		if err != nil {
			return err
		}
		defer res.Close()
		for res.Next() {
			var key string
			var r record
			if err := res.Scan(&key, &r.fingerprint, &r.m.ID, &r.m.CreatedAt); err != nil {
				return err
			}
			found[key] = r
		}
		return res.Err()
	})
	for _, r := range rows {
		if _, done := results[r]; done || r.key == "" {
			continue
		}
		rec, ok := found[r.key]
		switch {
		case err != nil:
			results[r] = writeResult{err: err}
		case !ok:
			// Stored and expired or deleted in between: nothing of this row
			// was stored, and a retry stores it.
			results[r] = writeResult{err: fmt.Errorf("%w: the idempotency key changed hands during the write", ErrUnavailable)}
		default:
			results[r] = answerForStoredKey(rec.m, rec.fingerprint, r)
		}
	}
}
