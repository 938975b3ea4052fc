package function

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/cloudevents/sdk-go/v2/event"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"

	"example.com/pscmessages/store"
)

// maxEventBytes bounds one delivery: a 10 MB Pub/Sub message grows by a third
// in base64, plus its envelope.
const maxEventBytes = 16 << 20

// serveEvent answers 2xx once the event is stored or kept as a dead letter (the
// platform then acknowledges it), and 5xx on a transient failure, so the
// platform delivers it again.
func (s *service) serveEvent(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		s.writeError(w, r, &apiError{status: http.StatusMethodNotAllowed, msg: "deliveries are POSTed", allow: "POST"})
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxEventBytes)
	e, err := eventFromRequest(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if err := s.Ingest(r.Context(), *e); err != nil {
		s.writeError(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// eventFromRequest decodes a CloudEvent in binary or structured mode, or turns
// a legacy Pub/Sub push body (no ce-id header) into the messagePublished event
// Eventarc would have sent, as functions-framework-go does.
func eventFromRequest(r *http.Request) (*event.Event, error) {
	ct := r.Header.Get("Content-Type")
	if r.Header.Get("ce-id") != "" || strings.HasPrefix(ct, "application/cloudevents") {
		e, err := cehttp.NewEventFromHTTPRequest(r)
		if err != nil {
			var tooBig *http.MaxBytesError
			if errors.As(err, &tooBig) {
				return nil, &apiError{status: http.StatusRequestEntityTooLarge, msg: fmt.Sprintf("delivery exceeds %d bytes", maxEventBytes)}
			}
			return nil, badRequest("not a valid CloudEvent: %v", err)
		}
		return e, nil
	}
	body, err := io.ReadAll(r.Body)
	var tooBig *http.MaxBytesError
	switch {
	case errors.As(err, &tooBig):
		return nil, &apiError{status: http.StatusRequestEntityTooLarge, msg: fmt.Sprintf("delivery exceeds %d bytes", maxEventBytes)}
	case err != nil:
		return nil, badRequest("reading the delivery failed")
	}
	var push struct {
		Message struct {
			MessageID   string    `json:"messageId"`
			PublishTime time.Time `json:"publishTime"`
		} `json:"message"`
		Subscription string `json:"subscription"`
	}
	if json.Unmarshal(body, &push) != nil || push.Message.MessageID == "" {
		return nil, badRequest("neither a CloudEvent (ce-* headers or application/cloudevents+json) nor a Pub/Sub push body")
	}
	e := event.New()
	e.SetID(push.Message.MessageID)
	e.SetType(MessagePublishedType)
	// Message ids are unique per topic; a push endpoint without the topic in
	// its path is keyed by its subscription, which belongs to one topic.
	origin := topicFromPath(r.URL.Path)
	if origin == "" {
		origin = push.Subscription
	}
	e.SetSource("//pubsub.googleapis.com/" + origin)
	if !push.Message.PublishTime.IsZero() {
		e.SetTime(push.Message.PublishTime)
	}
	// The push body already has the messagePublished data shape.
	if err := e.SetData("application/json", body); err != nil {
		return nil, badRequest("invalid push body: %v", err)
	}
	return &e, nil
}

// topicFromPath finds "projects/P/topics/T" in a push endpoint's path, where
// legacy push subscriptions name their topic.
func topicFromPath(path string) string {
	i := strings.Index(path, "projects/")
	if i < 0 {
		return ""
	}
	parts := strings.SplitN(path[i:], "/", 5)
	if len(parts) < 4 || parts[2] != "topics" || parts[1] == "" || parts[3] == "" {
		return ""
	}
	return strings.Join(parts[:4], "/")
}

// MessagePublishedType is the CloudEvent type Eventarc uses for Pub/Sub.
const MessagePublishedType = "google.cloud.pubsub.topic.v1.messagePublished"

// MessagePublishedData is the data of a messagePublished CloudEvent.
type MessagePublishedData struct {
	Message      PubsubMessage `json:"message"`
	Subscription string        `json:"subscription,omitempty"`
}

// PubsubMessage is a Pub/Sub message as pushed; Data is base64 in JSON.
type PubsubMessage struct {
	Data        []byte            `json:"data,omitempty"`
	Attributes  map[string]string `json:"attributes,omitempty"`
	MessageID   string            `json:"messageId,omitempty"`
	PublishTime time.Time         `json:"publishTime,omitzero"`
	OrderingKey string            `json:"orderingKey,omitempty"`
}

// poisonError explains why a message can never be stored.
type poisonError struct{ reason string }

func (e *poisonError) Error() string { return e.reason }

// Ingest stores the message of one messagePublished event. A message that can
// never be stored is kept in the dead-letter table and acknowledged; a
// transient failure returns an error so the platform delivers it again. A
// redelivery of a stored message (same topic and message id) stores nothing.
func (s *service) Ingest(ctx context.Context, e event.Event) error {
	log := s.eventLog(e)
	cfg, err := s.config()
	if err != nil {
		return fmt.Errorf("invalid configuration: %w", err)
	}
	st, err := s.db.get(ctx)
	if err != nil {
		log.Warn("event not stored: database unavailable; it will be redelivered", "error", err.Error())
		return fmt.Errorf("database unavailable: %w", err)
	}
	content, key, err := decodeEvent(e, cfg.maxContentBytes)
	var added store.Added
	if err == nil {
		added, err = st.Add(ctx, content, key)
		if errors.Is(err, store.ErrKeyReused) {
			err = &poisonError{"the message id was already stored with different content"}
		}
	}
	var poison *poisonError
	if errors.As(err, &poison) {
		if err := st.AddDeadLetter(ctx, store.DeadLetter{
			EventID: e.ID(), EventSource: e.Source(), EventType: e.Type(),
			Reason: poison.reason, Payload: e.Data(),
		}); err != nil {
			log.Warn("poison event not kept: database unavailable; it will be redelivered", "error", err.Error())
			return err
		}
		log.Warn("event kept in dead_letters", "reason", poison.reason)
		return nil
	}
	if err != nil {
		log.Warn("event not stored; it will be redelivered", "error", err.Error())
		return err
	}
	if added.Replayed {
		log.Debug("redelivered event already stored", "message_id", added.ID)
	}
	return nil
}

// decodeEvent returns the content and the deduplication key of an event, or a
// *poisonError when it can never be stored.
func decodeEvent(e event.Event, maxContent int) (content, key string, err error) {
	if e.Type() != MessagePublishedType {
		return "", "", &poisonError{fmt.Sprintf("event type %q is not %s", e.Type(), MessagePublishedType)}
	}
	var d MessagePublishedData
	if err := json.Unmarshal(e.Data(), &d); err != nil {
		return "", "", &poisonError{"event data is not a Pub/Sub message: " + err.Error()}
	}
	data := d.Message.Data
	switch {
	case len(data) == 0:
		return "", "", &poisonError{"message data is empty"}
	case !utf8.Valid(data):
		return "", "", &poisonError{"message data is not valid UTF-8 text"}
	}
	content = string(data)
	if j := strings.TrimSpace(content); strings.HasPrefix(j, "{") {
		var obj map[string]json.RawMessage
		if json.Unmarshal([]byte(j), &obj) == nil {
			if raw, ok := obj["content"]; ok {
				if len(raw) == 0 || raw[0] != '"' || json.Unmarshal(raw, &content) != nil {
					return "", "", &poisonError{`field "content" must be a string`}
				}
			}
		}
	}
	if err := checkContent(content, maxContent); err != nil {
		return "", "", &poisonError{err.Error()}
	}
	id := d.Message.MessageID
	if id == "" {
		id = e.ID()
	}
	return content, "pubsub:" + e.Source() + "#" + id, nil
}
