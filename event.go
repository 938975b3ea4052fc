package function

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"mime"
	"net/http"
	"strings"
	"time"
	"unicode/utf8"

	"example.com/pscmessages/cmd/logging"
	"example.com/pscmessages/store"
)

// serveEvent answers 2xx once the event is stored or kept whole as a dead
// letter (the platform then acknowledges it), and 5xx on a transient failure,
// so the platform delivers it again. A delivery that is not a decodable
// Pub/Sub event will never be, so it is kept in dead_letters and
// acknowledged too. A delivery too large to decode is answered 5xx and so
// left to Pub/Sub, which keeps it whole (see refuseOversized).
func (s *service) serveEvent(w http.ResponseWriter, r *http.Request) {
	w, done := s.trackRequest(w, r)
	defer done()
	if r.Method != http.MethodPost {
		s.writeError(w, r, &apiError{status: http.StatusMethodNotAllowed, msg: "deliveries are POSTed", allow: "POST"})
		return
	}
	cfg, err := s.config()
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	d, err := s.readDelivery(w, r, deliveryLimit(cfg))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	defer d.release()
	if d.oversized {
		s.refuseOversized(w, r, d, cfg)
		return
	}
	dec := decodeDelivery(r, d.body, cfg.maxContentBytes)
	ctx, m, endSpan := s.consume(r.Context(), dec.meta, dec.data, unwrappedAttrs(r))
	err = s.storeDecoded(ctx, m, dec)
	endSpan(err)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// refuseOversized answers a delivery larger than deliveryLimit with 500, so
// that it is not acknowledged. Keeping it as a dead letter would mean holding
// it whole (up to 13.4 MB per delivery, 20 at once) or keeping a part that
// can never be replayed; Pub/Sub instead keeps it whole, redelivers it with
// backoff (so raising MAX_CONTENT_BYTES meanwhile stores it) and, after the
// subscription's maximum delivery attempts, moves it to its dead-letter
// topic, from which it can be published again. 500, not 413: Eventarc and
// Pub/Sub retry every 5xx, while some delivery paths drop a 4xx for good.
// Retry-After slows the local runner's redeliveries (Pub/Sub ignores it).
func (s *service) refuseOversized(w http.ResponseWriter, r *http.Request, d *delivery, cfg settings) {
	m := oversizedMeta(r, d)
	s.metaLog(m).Warn("delivery too large to decode; not acknowledged, so Pub/Sub keeps it whole "+
		"(on the subscription's dead-letter topic after its last attempt); raise MAX_CONTENT_BYTES to store it",
		"size", d.size, "limit", deliveryLimit(cfg))
	w.Header().Set("Retry-After", "10")
	writeJSON(w, http.StatusInternalServerError, map[string]string{"error": oversizedReason(d, cfg)})
}

// oversizedReason says why d was not decoded.
func oversizedReason(d *delivery, cfg settings) string {
	more := ""
	if d.size >= maxDeliveryBytes {
		more = " or more"
	}
	return fmt.Sprintf("the delivery of %d bytes%s exceeds the %d bytes IngestPubSub decodes "+
		"(the base64 of MAX_BODY_BYTES=%d plus %d for the envelope; MAX_BODY_BYTES follows MAX_CONTENT_BYTES=%d unless set)",
		d.size, more, deliveryLimit(cfg), cfg.maxBodyBytes, envelopeAllowance, cfg.maxContentBytes)
}

// oversizedMeta names an oversized delivery as far as its headers, or the
// fields sniffed from its stream, tell.
func oversizedMeta(r *http.Request, d *delivery) eventMeta {
	h := r.Header
	m := eventMeta{id: h.Get("ce-id"), source: h.Get("ce-source"), typ: h.Get("ce-type"), traceparent: h.Get("traceparent")}
	switch {
	case isUnwrapped(r):
		m, _, _ = unwrappedEvent(r, nil)
	case m.id == "": // structured mode or a push body
		f := d.fields.found
		m.id, m.source, m.typ = cmp.Or(f["id"], f["messageId"], f["message_id"]), f["source"], f["type"]
		if f["messageId"] != "" || f["message_id"] != "" {
			m.typ = cmp.Or(m.typ, MessagePublishedType)
			if origin := cmp.Or(topicFromPath(r.URL.Path), f["subscription"]); m.source == "" && origin != "" {
				m.source = "//pubsub.googleapis.com/" + origin
			}
		}
	}
	return m
}

// eventMeta is what identifies a delivered event.
type eventMeta struct {
	id, source, typ string
	traceparent     string
}

// decoded is what one delivery says before the database is involved: the
// event's identity, and either the message's content under its
// deduplication key or why it can never be stored.
type decoded struct {
	meta eventMeta
	// data is the messagePublished payload, whose attributes the consumer
	// span reads; for an unwrapped push it is the message data itself.
	data         []byte
	content, key string
	poison       *poisonError
	// kept is what a dead letter of this delivery keeps.
	kept func() keptPayload
}

// decodeDelivery is the one decoding of a delivery, for serveEvent and
// Replay alike: a CloudEvent in binary or structured mode, a Pub/Sub push
// body (no ce-* headers) or an unwrapped push (the message data as body),
// whose body, at most deliveryLimit bytes, was read whole. Content is at
// most maxContent bytes; anything else is poison, with its reason.
func decodeDelivery(r *http.Request, body []byte, maxContent int) decoded {
	m, data, poison := eventFromDelivery(r, body)
	dec := decoded{meta: m, data: data, poison: poison, kept: func() keptPayload { return keptPayload{payload: body} }}
	if poison != nil {
		return dec
	}
	if !isUnwrapped(r) {
		dec.content, dec.key, dec.poison = decodeMessage(m, data, maxContent)
		return dec
	}
	msg, poison := unwrappedMessage(r, data)
	sub := r.Header.Get(headerSubscription)
	dec.kept = func() keptPayload { return wrappedPayload(msg, sub) }
	if poison == nil {
		dec.content, dec.key, dec.poison = decodePubsub(m, msg, maxContent)
	} else {
		dec.poison = poison
	}
	return dec
}

// eventFromDelivery decodes a CloudEvent in binary or structured mode, or a
// legacy Pub/Sub push body (no ce-* headers), into its identity and its data
// (the messagePublished payload). It does not copy the body: data is a slice
// of it, or of what structured mode decoded. A delivery that is none of these
// returns a poison reason.
func eventFromDelivery(r *http.Request, body []byte) (eventMeta, []byte, *poisonError) {
	h := r.Header
	m := eventMeta{id: h.Get("ce-id"), source: h.Get("ce-source"), typ: h.Get("ce-type"), traceparent: h.Get("traceparent")}
	mt, _, _ := mime.ParseMediaType(h.Get("Content-Type"))
	switch {
	case isUnwrapped(r):
		return unwrappedEvent(r, body)
	case mt == "application/cloudevents-batch+json":
		return m, nil, &poisonError{"batched CloudEvents are not supported"}
	case mt == "application/cloudevents+json":
		return structuredEvent(body)
	case h.Get("ce-specversion") != "" || h.Get("ce-id") != "":
		if v := h.Get("ce-specversion"); v != "1.0" && v != "0.3" {
			return m, nil, &poisonError{fmt.Sprintf("unsupported CloudEvents specversion %q (ce-specversion): want 1.0", v)}
		}
		return m, body, checkIdentity(m)
	}
	return legacyPushEvent(r, body)
}

// checkIdentity requires what a CloudEvent must have to be deduplicated.
func checkIdentity(m eventMeta) *poisonError {
	switch {
	case m.id == "":
		return &poisonError{"the CloudEvent has no id (ce-id)"}
	case m.source == "":
		return &poisonError{"the CloudEvent has no source (ce-source)"}
	case m.typ == "":
		return &poisonError{"the CloudEvent has no type (ce-type)"}
	}
	return nil
}

// structuredEvent decodes a structured-mode CloudEvent.
func structuredEvent(body []byte) (eventMeta, []byte, *poisonError) {
	var ce struct {
		SpecVersion string          `json:"specversion"`
		ID          string          `json:"id"`
		Source      string          `json:"source"`
		Type        string          `json:"type"`
		Data        json.RawMessage `json:"data"`
		DataBase64  []byte          `json:"data_base64"`
		Traceparent string          `json:"traceparent"`
	}
	if err := json.Unmarshal(body, &ce); err != nil {
		return eventMeta{}, nil, &poisonError{"not a structured CloudEvent (application/cloudevents+json): " + err.Error()}
	}
	m := eventMeta{id: ce.ID, source: ce.Source, typ: ce.Type, traceparent: ce.Traceparent}
	if ce.SpecVersion != "1.0" && ce.SpecVersion != "0.3" {
		return m, nil, &poisonError{fmt.Sprintf("unsupported CloudEvents specversion %q: want 1.0", ce.SpecVersion)}
	}
	data := []byte(ce.Data)
	if ce.DataBase64 != nil {
		data = ce.DataBase64
	}
	return m, data, checkIdentity(m)
}

// legacyPushBody is a Pub/Sub push body; Pub/Sub sends ids and times both in
// camelCase and snake_case.
type legacyPushBody struct {
	Message struct {
		MessageID      string `json:"messageId"`
		MessageIDSnake string `json:"message_id"`
	} `json:"message"`
	Subscription string `json:"subscription"`
}

// legacyPushEvent turns a Pub/Sub push body into the messagePublished event
// Eventarc would have sent, as functions-framework-go does: the body already
// has the messagePublished data shape.
func legacyPushEvent(r *http.Request, body []byte) (eventMeta, []byte, *poisonError) {
	var push legacyPushBody
	m := eventMeta{typ: MessagePublishedType, traceparent: r.Header.Get("traceparent")}
	if json.Unmarshal(body, &push) != nil || cmp.Or(push.Message.MessageID, push.Message.MessageIDSnake) == "" {
		return m, nil, &poisonError{"neither a CloudEvent (ce-* headers or application/cloudevents+json) nor a Pub/Sub push body with message.messageId"}
	}
	m.id = cmp.Or(push.Message.MessageID, push.Message.MessageIDSnake)
	// Message ids are unique per topic; a push endpoint without the topic in
	// its path is keyed by its subscription, which belongs to one topic.
	origin := topicFromPath(r.URL.Path)
	if origin == "" {
		origin = push.Subscription
	}
	m.source = "//pubsub.googleapis.com/" + origin
	return m, body, nil
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

// keptPayload is what a dead letter keeps of a delivery: all of it, so that
// it can be replayed once the cause is fixed. It is at most deliveryLimit
// bytes: a larger delivery is never decoded, and never kept.
type keptPayload struct {
	payload []byte
}

// storeDecoded is the one step every ingest path ends in (a push delivery,
// wrapped or not, an Eventarc event, a pulled message): it adds the decoded
// content under its key through the store's group commit, or keeps the
// delivery in dead_letters when decoding or the store says it can never be
// stored. It returns nil once the message is stored or kept, and an error
// when it failed for a transient reason and must be delivered again.
func (s *service) storeDecoded(ctx context.Context, m eventMeta, dec decoded) error {
	log := s.metaLog(m)
	st, err := s.db.get(ctx)
	if err != nil {
		if dec.poison != nil {
			log.Warn("poison event not kept: database unavailable; it will be redelivered", "error", causeText(err), "reason", dec.poison.reason)
		} else {
			log.Warn("event not stored: database unavailable; it will be redelivered", "error", causeText(err))
		}
		return fmt.Errorf("database unavailable: %w", err)
	}
	poison := dec.poison
	if poison == nil {
		added, err := st.Add(ctx, dec.content, dec.key)
		switch {
		case errors.Is(err, store.ErrKeyReused):
			poison = &poisonError{"the message id was already stored with different content"}
		case errors.Is(err, store.ErrInvalid):
			poison = &poisonError{"the message cannot be stored: " + err.Error()}
		case err != nil:
			log.Warn("event not stored; it will be redelivered", "error", logging.OneLine(err.Error()))
			return err
		case added.AlreadyStored:
			noteOutcome(ctx, "duplicate", "")
			log.Debug("redelivered event already stored", "message_id", added.ID)
		}
	}
	if poison != nil {
		return keepDeadLetter(ctx, st, log, m, poison.reason, dec.kept())
	}
	return nil
}

func keepDeadLetter(ctx context.Context, st *store.Store, log *slog.Logger, m eventMeta, reason string, kept keptPayload) error {
	if err := st.AddDeadLetter(ctx, store.DeadLetter{
		EventID: m.id, EventSource: m.source, EventType: m.typ, Reason: reason,
		Payload: kept.payload,
	}); err != nil {
		log.Warn("poison event not kept: database unavailable; it will be redelivered", "error", causeText(err), "reason", reason)
		return err
	}
	noteOutcome(ctx, "dead_lettered", deadLetterReason(reason))
	// Each dead letter is its own line, however many share a reason.
	log.Log(logging.EveryLine(ctx), slog.LevelWarn, "event kept in dead_letters", "reason", reason)
	return nil
}

// metaLog is the logger of one event; hostile ids and sources are cut and
// made valid UTF-8 so they cannot swell or break a log line.
func (s *service) metaLog(m eventMeta) *slog.Logger {
	traceID, spanID, sampled := traceFromHeaders(m.traceparent, "")
	return s.withTrace(traceID, spanID, sampled).With("event_id", logText(m.id), "event_source", logText(m.source))
}

func logText(s string) string {
	const max = 256
	if len(s) > max {
		s = s[:max] + "…"
	}
	return strings.ToValidUTF8(s, "\ufffd")
}

// Bounds on what identifies a Pub/Sub message, checked before it is used as
// a deduplication key: real message ids are decimal numbers of ~17 digits,
// and a source names a project (30 bytes) and a topic (255 bytes), 326 bytes
// in all. With the prefix and a publish time the key stays under
// store.MaxKeyBytes.
const (
	maxMessageIDBytes = 256
	maxSourceBytes    = 512
)

// decodeMessage returns the content and the deduplication key of an event, or a
// *poisonError when it can never be stored.
//
// The key is "pubsub:" + source + "#" + message id + "@" + publish time. Pub/Sub
// promises unique ids per topic and a redelivery carries the same publish time,
// so a redelivery maps to the same key. The publish time is there for an
// emulator restarted on a kept database: its ids start again at 1, and without
// the time its new message 1 would be taken for a redelivery of the stored one
// (same content: silently dropped; other content: a dead letter). A message
// without a publish time keeps the key "pubsub:" + source + "#" + id, which is
// also the key of every message stored before the time was added; see
// cmd/pscmessages/DEADLETTERS.md (Redeliveries) for what that means for an
// upgrade.
func decodeMessage(m eventMeta, raw []byte, maxContent int) (content, key string, poison *poisonError) {
	if m.typ != MessagePublishedType {
		return "", "", &poisonError{fmt.Sprintf("event type %q is not %s", logText(m.typ), MessagePublishedType)}
	}
	var d MessagePublishedData
	if err := json.Unmarshal(raw, &d); err != nil {
		return "", "", &poisonError{"event data is not a Pub/Sub message: " + err.Error()}
	}
	return decodePubsub(m, d.Message, maxContent)
}

// decodePubsub is decodeMessage for a message already taken out of its
// envelope; every path that delivers a message ends here, so a message gets
// the same content and key however it arrived.
func decodePubsub(m eventMeta, msg PubsubMessage, maxContent int) (content, key string, poison *poisonError) {
	data := msg.Data
	switch {
	case len(data) == 0:
		return "", "", &poisonError{"message data is empty"}
	case !utf8.Valid(data):
		return "", "", &poisonError{"message data is not valid UTF-8 text"}
	}
	content = string(data)
	if j := bytes.TrimSpace(data); bytes.HasPrefix(j, []byte("{")) {
		var obj map[string]json.RawMessage
		if json.Unmarshal(j, &obj) == nil {
			if raw, ok := obj["content"]; ok {
				if len(raw) == 0 || raw[0] != '"' || json.Unmarshal(raw, &content) != nil {
					return "", "", &poisonError{`field "content" must be a string`}
				}
				if err := checkEscapes(raw); err != nil {
					return "", "", &poisonError{err.Error()}
				}
			}
		}
	}
	if err := checkContent(content, maxContent); err != nil {
		return "", "", &poisonError{err.Error()}
	}
	id := cmp.Or(msg.MessageID, m.id)
	if reason := checkKeyPart("message id", id, maxMessageIDBytes); reason != "" {
		return "", "", &poisonError{reason}
	}
	if reason := checkKeyPart("event source", m.source, maxSourceBytes); reason != "" {
		return "", "", &poisonError{reason}
	}
	key = "pubsub:" + m.source + "#" + id
	if !msg.PublishTime.IsZero() {
		key += "@" + msg.PublishTime.UTC().Format(time.RFC3339Nano)
	}
	if len(key) > store.MaxKeyBytes { // only a publish time far out of range gets here
		return "", "", &poisonError{fmt.Sprintf("the deduplication key is %d bytes, more than %d", len(key), store.MaxKeyBytes)}
	}
	return content, key, nil
}

// checkKeyPart says why s cannot be part of a deduplication key, or "".
func checkKeyPart(what, s string, max int) string {
	switch {
	case s == "":
		return "the " + what + " is empty"
	case len(s) > max:
		return fmt.Sprintf("the %s is %d bytes, more than %d", what, len(s), max)
	case strings.IndexByte(s, 0) >= 0:
		return "the " + what + " contains a NUL byte"
	case !utf8.ValidString(s):
		return "the " + what + " is not valid UTF-8"
	}
	return ""
}

// A push subscription created with --push-no-wrapper and
// --push-no-wrapper-write-metadata POSTs the message data as the body and
// its metadata as x-goog-pubsub-* headers; each attribute becomes a header
// of its own name (https://cloud.google.com/pubsub/docs/payload-unwrapping,
// PushConfig.NoWrapper.write_metadata). Without write-metadata there is no
// message id, so nothing to deduplicate on: such a delivery is neither a
// CloudEvent nor a push body and is kept as a dead letter.
const (
	headerMessageID    = "X-Goog-Pubsub-Message-Id"
	headerPublishTime  = "X-Goog-Pubsub-Publish-Time"
	headerSubscription = "X-Goog-Pubsub-Subscription-Name"
)

// isUnwrapped reports a push delivery without the wrapper. The message id
// header decides even beside ce-* headers: attributes arrive as headers, so
// an attribute named ce-id must not turn the data into a CloudEvent, and
// neither Eventarc nor a wrapped push sends the header.
func isUnwrapped(r *http.Request) bool { return r.Header.Get(headerMessageID) != "" }

// unwrappedEvent names an unwrapped delivery as Eventarc would: the source
// is the topic in the push endpoint's path (so a message keeps its key when
// the subscription's wrapping or the trigger changes), else the
// subscription; data is the body, the message data itself.
func unwrappedEvent(r *http.Request, body []byte) (eventMeta, []byte, *poisonError) {
	h := r.Header
	m := eventMeta{id: h.Get(headerMessageID), typ: MessagePublishedType, traceparent: h.Get("traceparent")}
	origin := cmp.Or(topicFromPath(r.URL.Path), h.Get(headerSubscription))
	if origin == "" {
		return m, nil, &poisonError{"an unwrapped push delivery names neither its topic (in the push endpoint's path) nor its subscription (" + headerSubscription + ")"}
	}
	m.source = "//pubsub.googleapis.com/" + origin
	return m, body, nil
}

// unwrappedMessage is the message of an unwrapped delivery whose body is
// data. Attributes are not recovered: they cannot be told apart from the
// other headers, and nothing stored depends on them.
func unwrappedMessage(r *http.Request, data []byte) (PubsubMessage, *poisonError) {
	msg := PubsubMessage{Data: data, MessageID: r.Header.Get(headerMessageID)}
	if v := r.Header.Get(headerPublishTime); v != "" {
		t, err := time.Parse(time.RFC3339Nano, v)
		if err != nil {
			return msg, &poisonError{fmt.Sprintf("%s %q is not an RFC 3339 time", headerPublishTime, logText(v))}
		}
		msg.PublishTime = t
	}
	return msg, nil
}

// wrappedPayload is what a dead letter keeps of a message that arrived
// without the push wrapper: the wrapped form, which `deadletters replay`
// decodes as it decodes every kept push body.
func wrappedPayload(msg PubsubMessage, subscription string) keptPayload {
	b, err := json.Marshal(MessagePublishedData{Message: msg, Subscription: subscription})
	if err != nil { // only a publish time beyond year 9999
		b, _ = json.Marshal(MessagePublishedData{Message: PubsubMessage{Data: msg.Data, MessageID: msg.MessageID}, Subscription: subscription})
	}
	return keptPayload{payload: b}
}

// StorePubSubMessage stores a message pulled from a subscription of topic
// ("projects/P/topics/T") on f's configuration and pool, through the same
// decoding and storing as IngestPubSub: the same content and deduplication
// key as a push delivery or Eventarc event of that message, wrapped or not,
// so a message is stored once whichever path delivers it. It returns nil
// once the message is stored (now or before) or kept in dead_letters as one
// that can never be stored, and an error when it failed for a transient
// reason: the caller delivers it again later.
func (f *Service) StorePubSubMessage(ctx context.Context, topic string, msg PubsubMessage) error {
	return f.svc.storePulled(ctx, topic, msg)
}

func (s *service) storePulled(ctx context.Context, topic string, msg PubsubMessage) error {
	m := eventMeta{id: msg.MessageID, source: "//pubsub.googleapis.com/" + topic, typ: MessagePublishedType, traceparent: msg.Attributes["googclient_traceparent"]}
	ctx, m, endSpan := s.consume(ctx, m, nil, msg.Attributes)
	cfg, err := s.config()
	if err == nil {
		dec := decoded{meta: m, kept: func() keptPayload { return wrappedPayload(msg, "") }}
		dec.content, dec.key, dec.poison = decodePubsub(m, msg, cfg.maxContentBytes)
		err = s.storeDecoded(ctx, m, dec)
	} else {
		err = fmt.Errorf("invalid configuration: %w", err)
	}
	endSpan(err)
	return err
}
