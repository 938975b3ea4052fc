package store

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"
)

// maxDeadLetterText is how many bytes of an event's id, source and type a
// dead letter keeps for display (1 KiB each); the reason keeps up to four
// times that. An event that can never be stored may carry ids as long and
// as strange as its publisher made them; what is shown of them is bounded.
// The payload is kept whole: its callers bound it (IngestPubSub decodes, and
// so keeps, at most its delivery limit).
const maxDeadLetterText = 1 << 10

// DeadLetter is an event that can never be stored, kept for inspection.
//
// EventID, EventSource and EventType may hold any bytes, as a hostile
// publisher sends them. The columns keep a display form: valid UTF-8 without
// NUL is kept as is; a NUL or an invalid byte becomes the four characters
// \xNN, and text longer than maxDeadLetterText is cut (on a character
// boundary) to at most that many bytes, ending in "…". The exact bytes of a
// cut or escaped id are not recoverable; the dedupe_key column, a digest of
// the exact source, id and payload, still tells two such events apart.
//
// The same record is read back by operators (package deadletter, behind
// `go run ./cmd/pscmessages deadletters`) with the fields the store sets;
// AddDeadLetter ignores those.
type DeadLetter struct {
	EventID     string
	EventSource string
	EventType   string
	Reason      string
	// Payload is the event as received, kept whole so that it can be
	// replayed. It is empty in a listing.
	Payload []byte

	// Set by the store, read back.
	ID            int64
	ReceivedAt    time.Time
	PayloadSize   int64  // of the whole delivery; more than len(Payload) when only a prefix was kept
	PayloadSHA256 []byte // of the whole delivery
}

// AddDeadLetter keeps d, its payload whole, with the payload's size and
// sha256. A redelivered event (same source, id and payload digest) is kept
// once; an event reusing a source and id with another payload is kept beside
// the first.
func (s *Store) AddDeadLetter(ctx context.Context, d DeadLetter) error {
	sum := sha256.Sum256(d.Payload)
	key := deadLetterKey(d.EventSource, d.EventID, sum[:])
	err := s.run(ctx, func(ctx context.Context) error {
		_, err := s.pool.Exec(ctx, `INSERT INTO dead_letters
				(event_id, event_source, event_type, reason, payload, payload_size, payload_sha256, dedupe_key)
			VALUES (NULLIF($1, ''), NULLIF($2, ''), NULLIF($3, ''), $4, $5, $6, $7, $8)
			ON CONFLICT (dedupe_key) DO NOTHING`,
			displayText(d.EventID, maxDeadLetterText), displayText(d.EventSource, maxDeadLetterText),
			displayText(d.EventType, maxDeadLetterText), displayText(d.Reason, 4*maxDeadLetterText),
			d.Payload, int64(len(d.Payload)), sum[:], key)
		return err
	})
	if err != nil {
		return fmt.Errorf("keeping dead letter: %w", err)
	}
	return nil
}

// deadLetterKey is sha256(len(source) source len(id) id payloadSHA256), the
// lengths as 8-byte big-endian integers so that no two (source, id) pairs
// share an encoding. Migration 004 computes the same digest for the rows it
// backfills.
func deadLetterKey(source, id string, payloadSHA256 []byte) []byte {
	h := sha256.New()
	var n [8]byte
	for _, s := range []string{source, id} {
		binary.BigEndian.PutUint64(n[:], uint64(len(s)))
		h.Write(n[:])
		h.Write([]byte(s))
	}
	h.Write(payloadSHA256)
	return h.Sum(nil)
}

// displayText returns s as PostgreSQL text can hold it: NUL and bytes that
// are not UTF-8 escaped as \xNN, cut to at most limit bytes ending in "…".
func displayText(s string, limit int) string {
	if len(s) <= limit && utf8.ValidString(s) && !strings.ContainsRune(s, 0) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		piece := s[i : i+size]
		if r == 0 || (r == utf8.RuneError && size == 1) {
			piece = fmt.Sprintf(`\x%02x`, s[i])
		}
		if b.Len()+len(piece) > limit-len("…") {
			b.WriteString("…")
			break
		}
		b.WriteString(piece)
		i += size
	}
	return b.String()
}

// NotReplayable says why d cannot be sent through IngestPubSub again, or ""
// when it can: a delivery of which only a prefix was kept (dead_letters may
// hold such rows from before payloads were kept whole) is gone, and an id or
// source kept in display form (escaped or cut) would not deduplicate as the
// original did.
func (d DeadLetter) NotReplayable() string {
	sum := sha256.Sum256(d.Payload)
	switch {
	case d.PayloadSize > int64(len(d.Payload)) || (len(d.PayloadSHA256) > 0 && !bytes.Equal(sum[:], d.PayloadSHA256)):
		return fmt.Sprintf("only the first %d of its %d bytes were kept, so it cannot be sent again; "+
			"publish the message again, smaller, if it still matters, and delete this dead letter", len(d.Payload), d.PayloadSize)
	case displayText(d.EventID, maxDeadLetterText) != d.EventID || displayText(d.EventSource, maxDeadLetterText) != d.EventSource ||
		strings.Contains(d.EventID, `\x`) || strings.Contains(d.EventSource, `\x`) ||
		strings.HasSuffix(d.EventID, "…") || strings.HasSuffix(d.EventSource, "…"):
		return "its event id or source was escaped or cut when it was kept, so a replay would not be deduplicated like the original"
	}
	return ""
}
