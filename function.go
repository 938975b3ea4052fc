// Package function is a Cloud Run function that stores and serves messages in
// Cloud SQL for PostgreSQL. It has two entry points on one lazily opened pool:
//
//   - Messages (HTTP): GET / lists messages, POST / stores one, and /messages
//     is the full resource (list, create, read, update, delete).
//   - IngestPubSub (CloudEvent): stores messages published to a Pub/Sub topic
//     and delivered by Eventarc as messagePublished events.
//
// Everything about the database lives in package store; this package turns
// requests and events into store calls and store errors into answers.
package function

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"mime"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"cloud.google.com/go/compute/metadata"
	"github.com/GoogleCloudPlatform/functions-framework-go/functions"
	"github.com/cloudevents/sdk-go/v2/event"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"

	"example.com/pscmessages/store"
)

func init() {
	functions.HTTP("Messages", Messages)
	// IngestPubSub takes CloudEvents, but it is registered as an HTTP function
	// that decodes each request's own event: the CloudEvent adapter of
	// functions-framework-go (sdk-go v2.16.2 client.EventReceiver) hands an
	// event to whichever concurrent request's goroutine is waiting, with that
	// request's context, and can leave a delivery hanging until the next one
	// arrives. See serveEvent.
	functions.HTTP("IngestPubSub", serveEvent)
}

// shared is the process's one service: the pool it opens on first use is
// reused by every request and event the instance handles.
var shared = newService(os.Getenv, os.Stdout)

// Messages is the HTTP entry point.
func Messages(w http.ResponseWriter, r *http.Request) { shared.ServeHTTP(w, r) }

// IngestPubSub stores the message of one Pub/Sub messagePublished CloudEvent,
// for callers that already hold a decoded event.
func IngestPubSub(ctx context.Context, e event.Event) error { return shared.Ingest(ctx, e) }

// serveEvent is the deployed IngestPubSub entry point: one HTTP delivery of a
// CloudEvent (binary or structured mode) or a legacy Pub/Sub push body.
func serveEvent(w http.ResponseWriter, r *http.Request) { shared.serveEvent(w, r) }

// CheckConfig reports an invalid configuration, naming the variable, so a
// local runner can refuse to start instead of answering 500s.
func CheckConfig() error {
	_, err := shared.config()
	return err
}

// Close closes the shared pool, letting pending writes finish. Local runners
// call it on shutdown; on Cloud Run the instance simply stops.
func Close() { shared.Close() }

// Limits on what a request or message may carry, with their defaults.
const (
	DefaultMaxContentBytes = 64 << 10
	DefaultMaxBodyBytes    = 256 << 10
)

// settings is the function's configuration beyond the database's.
type settings struct {
	db              store.Config
	maxContentBytes int
	maxBodyBytes    int64
}

func loadSettings(getenv func(string) string) (settings, error) {
	db, err := store.ConfigFromEnv(getenv)
	if err != nil {
		return settings{}, err
	}
	s := settings{db: db, maxContentBytes: DefaultMaxContentBytes, maxBodyBytes: DefaultMaxBodyBytes}
	if v := getenv("MAX_CONTENT_BYTES"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 10<<20 {
			return settings{}, &store.ConfigError{Var: "MAX_CONTENT_BYTES", Msg: "must be an integer from 1 to 10485760"}
		}
		s.maxContentBytes = n
	}
	// The body must be able to carry the largest content, JSON-escaped.
	s.maxBodyBytes = max(DefaultMaxBodyBytes, 4*int64(s.maxContentBytes))
	if v := getenv("MAX_BODY_BYTES"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 2 || n > 64<<20 {
			return settings{}, &store.ConfigError{Var: "MAX_BODY_BYTES", Msg: "must be an integer from 2 to 67108864"}
		}
		s.maxBodyBytes = n
	}
	if s.maxBodyBytes < int64(s.maxContentBytes) {
		return settings{}, &store.ConfigError{Var: "MAX_BODY_BYTES", Msg: "must not be below MAX_CONTENT_BYTES"}
	}
	return s, nil
}

// service holds what both entry points share.
type service struct {
	getenv func(string) string
	log    *slog.Logger

	settingsOnce sync.Once // the environment does not change in a process
	settings     settings
	settingsErr  error

	db      lazyStore
	project projectID
}

func newService(getenv func(string) string, logTo io.Writer) *service {
	s := &service{getenv: getenv, log: newLogger(logTo)}
	s.db = lazyStore{open: s.openStore, log: s.log, sem: make(chan struct{}, 1)}
	s.project.getenv = getenv
	return s
}

func (s *service) config() (settings, error) {
	s.settingsOnce.Do(func() {
		s.settings, s.settingsErr = loadSettings(s.getenv)
		if s.settingsErr != nil {
			s.log.Error("invalid configuration", "error", s.settingsErr.Error())
		}
	})
	return s.settings, s.settingsErr
}

func (s *service) openStore(ctx context.Context) (*store.Store, error) {
	cfg, err := s.config()
	if err != nil {
		return nil, err
	}
	return store.Open(ctx, cfg.db)
}

// Close closes the pool if it was opened.
func (s *service) Close() { s.db.close() }

// lazyStore opens the store on first use. Concurrent first callers wait for
// one attempt; a failure is not kept forever but retried after a backoff that
// grows to maxBackoff, so a dead database is not hammered and a revived one is
// picked up without a restart.
type lazyStore struct {
	open func(context.Context) (*store.Store, error)
	log  *slog.Logger

	st  atomic.Pointer[store.Store]
	sem chan struct{} // one opener at a time; a channel so waiters can give up

	// Guarded by sem.
	failures int
	retryAt  time.Time
	lastErr  error
	closed   bool // set by close: no pool is opened after it
}

const (
	openTimeout = 30 * time.Second
	minBackoff  = 200 * time.Millisecond
	maxBackoff  = 10 * time.Second
)

// unavailableError carries how long a caller should wait before retrying.
type unavailableError struct {
	retryAfter time.Duration
	err        error
}

func (e *unavailableError) Error() string { return e.err.Error() }
func (e *unavailableError) Unwrap() error { return e.err }

func (l *lazyStore) get(ctx context.Context) (*store.Store, error) {
	if st := l.st.Load(); st != nil {
		return st, nil
	}
	select {
	case l.sem <- struct{}{}:
	case <-ctx.Done():
		return nil, fmt.Errorf("%w: waiting for the pool: %w", store.ErrUnavailable, ctx.Err())
	}
	defer func() { <-l.sem }()
	if st := l.st.Load(); st != nil {
		return st, nil
	}
	if l.closed {
		return nil, store.ErrClosed
	}
	if wait := time.Until(l.retryAt); wait > 0 {
		return nil, &unavailableError{retryAfter: wait, err: l.lastErr}
	}
	// Not the request's context: the pool outlives the request that opened it.
	openCtx, cancel := context.WithTimeout(context.Background(), openTimeout)
	defer cancel()
	st, err := l.open(openCtx)
	if err != nil {
		l.failures++
		backoff := min(minBackoff<<min(l.failures-1, 16), maxBackoff)
		l.retryAt = time.Now().Add(backoff)
		var cfgErr *store.ConfigError
		if !errors.As(err, &cfgErr) && !errors.Is(err, store.ErrUnavailable) {
			err = fmt.Errorf("%w: %w", store.ErrUnavailable, err)
		}
		l.lastErr = err
		l.log.Error("opening the database failed", "error", err.Error(), "attempt", l.failures, "retry_in", backoff.String())
		return nil, &unavailableError{retryAfter: backoff, err: err}
	}
	if l.failures > 0 {
		l.log.Info("database opened", "after_attempts", l.failures+1)
	}
	l.failures = 0
	l.st.Store(st)
	return st, nil
}

// close waits for an open in progress, so its pool is closed too, and keeps
// later callers from opening another.
func (l *lazyStore) close() {
	l.sem <- struct{}{}
	defer func() { <-l.sem }()
	l.closed = true
	if st := l.st.Swap(nil); st != nil {
		st.Close()
	}
}

// ---- HTTP ----

// apiError is an answer other than success, with a message safe to show.
type apiError struct {
	status int
	msg    string
	allow  string // for 405
}

func (e *apiError) Error() string { return e.msg }

func badRequest(format string, args ...any) error {
	return &apiError{status: http.StatusBadRequest, msg: fmt.Sprintf(format, args...)}
}

var errNoRoute = &apiError{status: http.StatusNotFound, msg: "not found"}

// ServeHTTP routes the legacy root contract and the /messages resource.
func (s *service) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var err error
	switch p := r.URL.Path; {
	case p == "/" || p == "":
		err = s.serveRoot(w, r)
	case p == "/messages" || p == "/messages/":
		err = s.serveCollection(w, r)
	case strings.HasPrefix(p, "/messages/"):
		err = s.serveItem(w, r, strings.TrimPrefix(p, "/messages/"))
	default:
		err = errNoRoute
	}
	if err != nil {
		s.writeError(w, r, err)
	}
}

// serveRoot keeps the tutorial's contract: GET lists contents as strings,
// POST stores one and answers {"status": "Message added!"}.
func (s *service) serveRoot(w http.ResponseWriter, r *http.Request) error {
	switch r.Method {
	case http.MethodGet, http.MethodHead:
		list, page, err := s.list(r)
		if err != nil {
			return err
		}
		contents := make([]string, len(list.Messages))
		for i, m := range list.Messages {
			contents[i] = m.Content
		}
		if list.Next != 0 {
			w.Header().Set("Link", fmt.Sprintf(`</?before=%d&limit=%d>; rel="next"`, list.Next, pageLimit(page)))
		}
		writeJSON(w, http.StatusOK, map[string]any{"messages": contents})
		return nil
	case http.MethodPost:
		added, err := s.create(r)
		if err != nil {
			return err
		}
		markReplay(w, added)
		writeJSON(w, http.StatusOK, map[string]any{"status": "Message added!", "id": added.ID})
		return nil
	}
	return &apiError{status: http.StatusMethodNotAllowed, msg: "method not allowed", allow: "GET, HEAD, POST"}
}

// serveCollection is /messages: list with ids and timestamps, or create.
func (s *service) serveCollection(w http.ResponseWriter, r *http.Request) error {
	switch r.Method {
	case http.MethodGet, http.MethodHead:
		list, page, err := s.list(r)
		if err != nil {
			return err
		}
		body := struct {
			Messages []store.Message `json:"messages"`
			Next     string          `json:"next,omitempty"`
		}{Messages: list.Messages}
		if body.Messages == nil {
			body.Messages = []store.Message{}
		}
		if list.Next != 0 {
			body.Next = fmt.Sprintf("/messages?before=%d&limit=%d", list.Next, pageLimit(page))
			w.Header().Set("Link", fmt.Sprintf(`<%s>; rel="next"`, body.Next))
		}
		writeJSON(w, http.StatusOK, body)
		return nil
	case http.MethodPost:
		added, err := s.create(r)
		if err != nil {
			return err
		}
		markReplay(w, added)
		w.Header().Set("Location", fmt.Sprintf("/messages/%d", added.ID))
		writeJSON(w, http.StatusCreated, added.Message)
		return nil
	}
	return &apiError{status: http.StatusMethodNotAllowed, msg: "method not allowed", allow: "GET, HEAD, POST"}
}

// serveItem is /messages/{id}.
func (s *service) serveItem(w http.ResponseWriter, r *http.Request, rawID string) error {
	const allow = "GET, HEAD, PUT, PATCH, DELETE"
	switch r.Method {
	case http.MethodGet, http.MethodHead, http.MethodPut, http.MethodPatch, http.MethodDelete:
	default:
		return &apiError{status: http.StatusMethodNotAllowed, msg: "method not allowed", allow: allow}
	}
	id, err := strconv.ParseInt(rawID, 10, 64)
	if err != nil || id <= 0 {
		return &apiError{status: http.StatusNotFound, msg: "message not found"}
	}
	switch r.Method {
	case http.MethodPut, http.MethodPatch:
		cfg, err := s.config()
		if err != nil {
			return err
		}
		content, err := readContent(w, r, cfg)
		if err != nil {
			return err
		}
		st, err := s.db.get(r.Context())
		if err != nil {
			return err
		}
		m, err := st.Update(r.Context(), id, content)
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, m)
	case http.MethodDelete:
		st, err := s.db.get(r.Context())
		if err != nil {
			return err
		}
		if err := st.Delete(r.Context(), id); err != nil {
			return err
		}
		w.WriteHeader(http.StatusNoContent)
	default:
		st, err := s.db.get(r.Context())
		if err != nil {
			return err
		}
		m, err := st.Get(r.Context(), id)
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, m)
	}
	return nil
}

// list reads the page parameters and lists that page.
func (s *service) list(r *http.Request) (store.Listing, store.Page, error) {
	page, err := parsePage(r.URL.Query())
	if err != nil {
		return store.Listing{}, page, err
	}
	st, err := s.db.get(r.Context())
	if err != nil {
		return store.Listing{}, page, err
	}
	list, err := st.List(r.Context(), page)
	return list, page, err
}

// parsePage reads ?limit= (1..MaxPageSize) and ?before= (an id) for paging back.
func parsePage(q url.Values) (store.Page, error) {
	var p store.Page
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > store.MaxPageSize {
			return p, badRequest("limit must be an integer from 1 to %d", store.MaxPageSize)
		}
		p.Limit = n
	}
	if v := q.Get("before"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 1 {
			return p, badRequest("before must be a positive message id")
		}
		p.Before = n
	}
	return p, nil
}

func pageLimit(p store.Page) int {
	if p.Limit == 0 {
		return store.DefaultPageSize
	}
	return p.Limit
}

// create validates a POST and stores it, honouring Idempotency-Key.
func (s *service) create(r *http.Request) (store.Added, error) {
	cfg, err := s.config()
	if err != nil {
		return store.Added{}, err
	}
	key, err := idempotencyKey(r.Header)
	if err != nil {
		return store.Added{}, err
	}
	content, err := readContent(nil, r, cfg)
	if err != nil {
		return store.Added{}, err
	}
	st, err := s.db.get(r.Context())
	if err != nil {
		return store.Added{}, err
	}
	added, err := st.Add(r.Context(), content, key)
	if err != nil {
		return store.Added{}, err
	}
	if added.Replayed && added.Content != content {
		return store.Added{}, &apiError{status: http.StatusUnprocessableEntity, msg: "Idempotency-Key was already used for a request with different content"}
	}
	return added, nil
}

// idempotencyKey returns the namespaced key of a POST, "" when there is none.
func idempotencyKey(h http.Header) (string, error) {
	v := h.Get("Idempotency-Key")
	if v == "" {
		return "", nil
	}
	if len(v) > 255 {
		return "", badRequest("Idempotency-Key must be at most 255 characters")
	}
	for i := 0; i < len(v); i++ {
		if v[i] < 0x21 || v[i] > 0x7e {
			return "", badRequest("Idempotency-Key must be printable ASCII without spaces")
		}
	}
	return "http:" + v, nil
}

func markReplay(w http.ResponseWriter, a store.Added) {
	if a.Replayed {
		w.Header().Set("Idempotent-Replayed", "true")
	}
}

// readContent reads a JSON {"content": "..."} body within the size limits.
func readContent(w http.ResponseWriter, r *http.Request, cfg settings) (string, error) {
	ct := r.Header.Get("Content-Type")
	mt, params, err := mime.ParseMediaType(ct)
	if ct == "" || err != nil || mt != "application/json" {
		return "", &apiError{status: http.StatusUnsupportedMediaType, msg: "Content-Type must be application/json"}
	}
	if cs, ok := params["charset"]; ok && !strings.EqualFold(cs, "utf-8") {
		return "", &apiError{status: http.StatusUnsupportedMediaType, msg: "charset must be utf-8"}
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, cfg.maxBodyBytes))
	var tooBig *http.MaxBytesError
	switch {
	case errors.As(err, &tooBig):
		return "", &apiError{status: http.StatusRequestEntityTooLarge, msg: fmt.Sprintf("request body exceeds %d bytes", cfg.maxBodyBytes)}
	case err != nil:
		return "", badRequest("reading request body failed")
	}
	return decodeContent(body, cfg.maxContentBytes)
}

// decodeContent extracts and validates "content" from a JSON object body.
func decodeContent(body []byte, maxContent int) (string, error) {
	if len(strings.TrimSpace(string(body))) == 0 {
		return "", badRequest("request body is empty; send {\"content\": \"...\"}")
	}
	if !utf8.Valid(body) {
		return "", badRequest("request body is not valid UTF-8")
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(body, &obj); err != nil {
		var typeErr *json.UnmarshalTypeError
		if errors.As(err, &typeErr) {
			return "", badRequest("request body must be a JSON object")
		}
		return "", badRequest("request body is not valid JSON")
	}
	if obj == nil {
		return "", badRequest("request body must be a JSON object")
	}
	raw, ok := obj["content"]
	if !ok {
		return "", badRequest("field \"content\" is required")
	}
	var content string
	if len(raw) == 0 || raw[0] != '"' || json.Unmarshal(raw, &content) != nil {
		return "", badRequest("field \"content\" must be a string")
	}
	if err := checkContent(content, maxContent); err != nil {
		return "", err
	}
	return content, nil
}

// checkContent applies the rules every stored message obeys, from either entry point.
func checkContent(content string, maxContent int) error {
	switch {
	case strings.TrimSpace(content) == "":
		return badRequest("content must not be empty")
	case len(content) > maxContent:
		return &apiError{status: http.StatusRequestEntityTooLarge, msg: fmt.Sprintf("content exceeds %d bytes", maxContent)}
	case strings.IndexByte(content, 0) >= 0:
		return badRequest("content must not contain NUL characters")
	case !utf8.ValidString(content):
		return badRequest("content is not valid UTF-8")
	}
	return nil
}

// writeError answers err as JSON {"error": "..."} with a fitting status. Only
// apiError messages, written for clients, are shown; causes go to the log.
func (s *service) writeError(w http.ResponseWriter, r *http.Request, err error) {
	var apiErr *apiError
	var cfgErr *store.ConfigError
	var unavail *unavailableError
	switch {
	case errors.Is(err, context.Canceled):
		// The client left; nobody reads this answer.
		writeJSON(w, 499, map[string]string{"error": "request canceled"})
	case errors.As(err, &apiErr):
		if apiErr.allow != "" {
			w.Header().Set("Allow", apiErr.allow)
		}
		s.requestLog(r).Debug("rejected request", "status", apiErr.status, "error", apiErr.msg)
		writeJSON(w, apiErr.status, map[string]string{"error": apiErr.msg})
	case errors.Is(err, store.ErrNotFound):
		writeJSON(w, http.StatusNotFound, map[string]string{"error": "message not found"})
	case errors.As(err, &cfgErr):
		s.requestLog(r).Error("request failed: invalid configuration", "error", err.Error())
		writeJSON(w, http.StatusInternalServerError, map[string]string{"error": "the service is misconfigured; see its logs"})
	case errors.Is(err, store.ErrUnavailable), errors.Is(err, store.ErrSchema), errors.Is(err, store.ErrClosed):
		retry := time.Second
		if errors.As(err, &unavail) {
			retry = unavail.retryAfter
		}
		w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(max(retry, time.Second).Seconds()))))
		s.requestLog(r).Warn("request failed: database unavailable", "error", err.Error())
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": "database unavailable, retry later"})
	default:
		s.requestLog(r).Error("request failed", "error", err.Error())
		writeJSON(w, http.StatusInternalServerError, map[string]string{"error": "internal error"})
	}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(v) // a failed write means the client is gone
}

// ---- Pub/Sub CloudEvents ----

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
	added, err := st.Add(ctx, content, key)
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

// ---- logging ----

// newLogger writes JSON lines in Cloud Logging's structured format.
func newLogger(w io.Writer) *slog.Logger {
	return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{ReplaceAttr: cloudLoggingAttr}))
}

func cloudLoggingAttr(groups []string, a slog.Attr) slog.Attr {
	if len(groups) > 0 {
		return a
	}
	switch a.Key {
	case slog.MessageKey:
		a.Key = "message"
	case slog.LevelKey:
		a.Key = "severity"
		switch level := a.Value.Any().(slog.Level); {
		case level >= slog.LevelError:
			a.Value = slog.StringValue("ERROR")
		case level >= slog.LevelWarn:
			a.Value = slog.StringValue("WARNING")
		case level >= slog.LevelInfo:
			a.Value = slog.StringValue("INFO")
		default:
			a.Value = slog.StringValue("DEBUG")
		}
	}
	return a
}

// requestLog is the logger for one request, correlated with its trace.
func (s *service) requestLog(r *http.Request) *slog.Logger {
	traceID, spanID, sampled := traceFromHeaders(r.Header.Get("traceparent"), r.Header.Get("X-Cloud-Trace-Context"))
	return s.withTrace(traceID, spanID, sampled).With("method", r.Method, "path", r.URL.Path)
}

func (s *service) eventLog(e event.Event) *slog.Logger {
	tp, _ := e.Extensions()["traceparent"].(string)
	traceID, spanID, sampled := traceFromHeaders(tp, "")
	return s.withTrace(traceID, spanID, sampled).With("event_id", e.ID(), "event_source", e.Source())
}

func (s *service) withTrace(traceID, spanID string, sampled bool) *slog.Logger {
	if traceID == "" {
		return s.log
	}
	project := s.project.get()
	if project == "" {
		return s.log
	}
	return s.log.With(
		"logging.googleapis.com/trace", "projects/"+project+"/traces/"+traceID,
		"logging.googleapis.com/spanId", spanID,
		"logging.googleapis.com/trace_sampled", sampled)
}

// traceFromHeaders reads W3C traceparent, falling back to X-Cloud-Trace-Context
// ("TRACE/SPAN;o=1", SPAN in decimal).
func traceFromHeaders(traceparent, cloudTrace string) (traceID, spanID string, sampled bool) {
	if p := strings.Split(traceparent, "-"); len(p) == 4 && len(p[1]) == 32 && len(p[2]) == 16 && len(p[3]) == 2 && isHex(p[1]) && isHex(p[2]) {
		flags, err := strconv.ParseUint(p[3], 16, 8)
		return p[1], p[2], err == nil && flags&1 == 1
	}
	if cloudTrace == "" {
		return "", "", false
	}
	trace, rest, _ := strings.Cut(cloudTrace, "/")
	if len(trace) != 32 || !isHex(trace) {
		return "", "", false
	}
	span, opts, _ := strings.Cut(rest, ";")
	if n, err := strconv.ParseUint(span, 10, 64); err == nil {
		spanID = fmt.Sprintf("%016x", n)
	}
	return trace, spanID, opts == "o=1"
}

func isHex(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F') {
			return false
		}
	}
	return true
}

// projectID finds the project for trace correlation: from the environment, or
// on Cloud Run (K_SERVICE set) from the metadata server, asked once.
type projectID struct {
	getenv func(string) string
	once   sync.Once
	id     string
}

func (p *projectID) get() string {
	p.once.Do(func() {
		for _, name := range []string{"GOOGLE_CLOUD_PROJECT", "GCP_PROJECT", "GCLOUD_PROJECT"} {
			if v := p.getenv(name); v != "" {
				p.id = v
				return
			}
		}
		if p.getenv("K_SERVICE") != "" || p.getenv("GCE_METADATA_HOST") != "" {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			p.id, _ = metadata.ProjectIDWithContext(ctx)
		}
	})
	return p.id
}
