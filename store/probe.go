package store

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
)

// Telling a bad row from a database fault. A statement that fails with a
// SQLSTATE a row's data can cause (rowTied) may be the row's fault (content a
// CHECK refuses) or the database's (a trigger, a constraint or a column type
// that refuses every row). The SQLSTATE does not say which, and a lone row has
// no neighbours to compare with. So before a row is blamed, a probe writes a
// canary row the same way, in a transaction that is rolled back: triggers and
// constraints run (deferred ones too), nothing is stored. If the database
// accepts the canary, the row is at fault (ErrInvalid: 422, a dead letter);
// if it refuses the canary too, the database is (ErrUnavailable: 503, a
// redelivery).
//
// Cost: one probe per failed write, never per row: a batch is probed once,
// after it has been split down to the rows that fail alone, and concurrent
// updates that fail share one probe. A failed probe is trusted for
// faultHold without probing again, unless a write of that kind succeeds
// meanwhile, so that during an outage every write is answered 503 at once
// and the database sees at most one probe per faultHold per kind.
const faultHold = time.Second

// probeKind is the shape of write a canary imitates: a keyed insert also
// writes idempotency_keys, whose own triggers or constraints may be at fault.
type probeKind int

const (
	probeInsert probeKind = iota
	probeInsertKeyed
	probeUpdate
	probeKinds
)

// fixedCanary is the canary content until this store has stored a message.
const fixedCanary = "canary: a probe of whether the database accepts messages"

// maxCanaryBytes bounds the content reused as a canary: a recently stored
// message is the best witness of what the database accepts, but a probe
// should stay cheap.
const maxCanaryBytes = 4 << 10

type prober struct {
	s         *Store
	mu        sync.Mutex
	calls     [probeKinds]*probeCall
	succeeded [probeKinds]atomic.Int64 // unix nanos of the last write of the kind that succeeded
	canary    atomic.Pointer[string]
}

type probeCall struct {
	started time.Time
	ended   time.Time // zero while running
	done    chan struct{}
	err     error // nil: the database accepted the canary
}

// stored notes a successful write of kind k and what it stored.
func (p *prober) stored(k probeKind, content string) {
	p.succeeded[k].Store(time.Now().UnixNano())
	if len(content) <= maxCanaryBytes && content != "" {
		p.canary.Store(&content)
	}
}

// heldFault returns the error of a recent failed probe of kind k when no
// write of that kind succeeded since it: the database is still taken to be at
// fault.
func (p *prober) heldFault(k probeKind) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	c := p.calls[k]
	if c == nil || c.ended.IsZero() || c.err == nil || time.Since(c.ended) > faultHold ||
		p.succeeded[k].Load() > c.ended.UnixNano() {
		return nil
	}
	return c.err
}

// judge returns nil when the database accepted a canary of kind k written by
// a probe that started no earlier than since (when the failed statement
// started), so the row is at fault; otherwise the error that proves the
// database at fault, wrapping ErrUnavailable. id is the row an update probe
// writes (the failed update's own, which existed when it failed).
func (p *prober) judge(ctx context.Context, k probeKind, since time.Time, id int64) error {
	if err := p.heldFault(k); err != nil {
		return err
	}
	for {
		p.mu.Lock()
		c := p.calls[k]
		if c != nil && (!c.started.Before(since) || c.ended.IsZero()) {
			p.mu.Unlock()
			select {
			case <-c.done:
			case <-ctx.Done():
				return classify(ctx.Err())
			}
			if !c.started.Before(since) {
				return c.err
			}
			continue // it started before the failure: it proves nothing about it
		}
		c = &probeCall{started: time.Now(), done: make(chan struct{})}
		p.calls[k] = c
		p.mu.Unlock()
		err := p.probe(k, id)
		p.mu.Lock()
		c.err, c.ended = err, time.Now()
		p.mu.Unlock()
		close(c.done)
		return err
	}
}

// probe writes a canary of kind k in a transaction that it rolls back.
func (p *prober) probe(k probeKind, id int64) error {
	content := fixedCanary
	if c := p.canary.Load(); c != nil {
		content = *c
	}
	err := p.s.run(context.Background(), func(ctx context.Context) error {
		tx, err := p.s.pool.Begin(ctx)
		if err != nil {
			return err
		}
		defer tx.Rollback(context.Background()) //nolint:errcheck // rolled back either way
		// Deferred constraints are checked at COMMIT, which a probe never
		// reaches: check them at the statement instead.
		if _, err := tx.Exec(ctx, "SET CONSTRAINTS ALL IMMEDIATE"); err != nil {
			return err
		}
		var rows pgx.Rows
		switch k {
		case probeInsert:
			rows, err = tx.Query(ctx, insertKeyless, []string{content})
		case probeInsertKeyed:
			var b [16]byte
			_, _ = rand.Read(b[:])
			key := "canary:" + hex.EncodeToString(b[:])
			sum := sha256.Sum256([]byte(content))
			rows, err = tx.Query(ctx, insertKeyed, []string{content}, []*string{&key}, [][]byte{sum[:]})
		case probeUpdate:
			_, err = tx.Exec(ctx, "UPDATE messages SET content = $2, updated_at = now() WHERE id = $1::bigint", id, content)
			return err
		}
		if err != nil {
			return err
		}
		rows.Close()
		return rows.Err()
	})
	if err != nil {
		return fmt.Errorf("%w: the database refuses a known-good canary row too, so the fault is the database's, not the message's: %w", ErrUnavailable, err)
	}
	return nil
}
