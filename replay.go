package function

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"example.com/pscmessages/store"
)

// Replayed is what Replay did with a kept delivery.
type Replayed struct {
	MessageID int64
	// AlreadyStored is set when the message had been stored before (the
	// same topic, message id and publish time): nothing new was stored.
	AlreadyStored bool
}

// ErrStillPoison means a replayed delivery still cannot be stored; the error
// says why. Nothing was stored or kept again.
var ErrStillPoison = errors.New("still cannot be stored")

// Replay sends d, a dead letter as deadletter.Get reads it back (its
// id, source, type and payload), through IngestPubSub's own decoding and
// storing again, as a binary-mode delivery with the kept id, source and
// type (a structured-mode body as it came), so it gets the same
// deduplication key as the original: a message already stored is not
// stored twice. Unlike a delivery, a replay that is still poison is not
// kept again: it returns ErrStillPoison. It uses f's configuration through
// a store of its own that only adds: it neither migrates nor cleans up
// expired idempotency keys, so the dead-letter operator's role needs only
// deadletter.OperatorPrivileges, never UPDATE or DELETE on messages.
func (f *Service) Replay(ctx context.Context, d store.DeadLetter) (Replayed, error) {
	return f.svc.tracedReplay(ctx, d)
}

func (s *service) replay(ctx context.Context, d store.DeadLetter) (Replayed, error) {
	cfg, err := s.config()
	if err != nil {
		return Replayed{}, err
	}
	r, err := replayRequest(ctx, d)
	if err != nil {
		return Replayed{}, err
	}
	dl, err := s.readDelivery(nil, r, deliveryLimit(cfg))
	if err != nil {
		return Replayed{}, err
	}
	defer dl.release()
	if dl.oversized {
		return Replayed{}, fmt.Errorf("%w: %s", ErrStillPoison, oversizedReason(dl, cfg))
	}
	dec := decodeDelivery(r, dl.body, cfg.maxContentBytes)
	if dec.poison != nil {
		return Replayed{}, fmt.Errorf("%w: %s", ErrStillPoison, dec.poison.reason)
	}
	st, err := s.replayDB.get(ctx)
	if err != nil {
		return Replayed{}, err
	}
	added, err := st.Add(ctx, dec.content, dec.key)
	switch {
	case errors.Is(err, store.ErrKeyReused):
		return Replayed{}, fmt.Errorf("%w: the message id was already stored with different content", ErrStillPoison)
	case errors.Is(err, store.ErrInvalid):
		return Replayed{}, fmt.Errorf("%w: %s", ErrStillPoison, strings.TrimSpace(err.Error()))
	case err != nil:
		return Replayed{}, err
	}
	return Replayed{MessageID: added.ID, AlreadyStored: added.AlreadyStored}, nil
}

// replayRequest is the delivery that replays d: a structured-mode body as it
// came, or else a binary-mode CloudEvent with the kept id, source and type.
// A body is taken for a structured CloudEvent only when it names the dead
// letter's own id, source and type: the data of a binary-mode event or a push
// body may carry a "specversion" member of its own.
func replayRequest(ctx context.Context, d store.DeadLetter) (*http.Request, error) {
	r, err := http.NewRequestWithContext(ctx, http.MethodPost, "/", bytes.NewReader(d.Payload))
	if err != nil {
		return nil, err
	}
	var probe struct {
		SpecVersion string `json:"specversion"`
		ID          string `json:"id"`
		Source      string `json:"source"`
		Type        string `json:"type"`
	}
	if json.Unmarshal(d.Payload, &probe) == nil && probe.SpecVersion != "" &&
		probe.ID == d.EventID && probe.Source == d.EventSource && probe.Type == d.EventType {
		r.Header.Set("Content-Type", "application/cloudevents+json")
	} else {
		r.Header.Set("Content-Type", "application/json")
		r.Header.Set("ce-specversion", "1.0")
		r.Header.Set("ce-id", d.EventID)
		r.Header.Set("ce-source", d.EventSource)
		r.Header.Set("ce-type", d.EventType)
	}
	return r, nil
}

// openReplayStore opens Replay's store: the process's configuration with
// store.Config.ReplayOnly and without migrating (the operator role may not
// change the schema; Open still checks that it is current).
func (s *service) openReplayStore(ctx context.Context) (*store.Store, error) {
	cfg, err := s.config()
	if err != nil {
		return nil, err
	}
	db := cfg.db
	db.ReplayOnly, db.Migrate = true, false
	return store.Open(ctx, db)
}
