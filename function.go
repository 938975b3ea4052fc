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
	"cmp"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strconv"
	"sync"

	"github.com/GoogleCloudPlatform/functions-framework-go/functions"
	"github.com/cloudevents/sdk-go/v2/event"

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
	shared.tel = tel
	if telErr != nil {
		shared.log.Error("OpenTelemetry is off: invalid configuration", "error", telErr.Error())
	}
	flushOnSIGTERM(tel, os.Getenv)
}

// shared is the process's one service: the pool it opens on first use is
// reused by every request and event the instance handles.
var shared = newService(os.Getenv, os.Stdout)

// tel is the process's OpenTelemetry SDK, nil when the OTEL_* variables do
// not ask for it (see telemetry.go); an invalid one is reported by config.
var tel, telErr = setupTelemetry(os.Getenv, nil)

// The entry points as served: in a server span each when telemetry is on.
var (
	messagesEntry = tel.instrument("Messages", http.HandlerFunc(shared.ServeHTTP), messagesRoute)
	eventEntry    = tel.instrument("IngestPubSub", http.HandlerFunc(shared.serveEvent), deliveryRoute)
)

// Messages is the HTTP entry point.
func Messages(w http.ResponseWriter, r *http.Request) { messagesEntry.ServeHTTP(w, r) }

// IngestPubSub stores the message of one Pub/Sub messagePublished CloudEvent,
// for callers that already hold a decoded event.
func IngestPubSub(ctx context.Context, e event.Event) error { return shared.Ingest(ctx, e) }

// serveEvent is the deployed IngestPubSub entry point: one HTTP delivery of a
// CloudEvent (binary or structured mode) or a legacy Pub/Sub push body.
func serveEvent(w http.ResponseWriter, r *http.Request) { eventEntry.ServeHTTP(w, r) }

// CheckConfig reports an invalid configuration, naming the variable, so a
// local runner can refuse to start instead of answering 500s.
func CheckConfig() error {
	cfg, err := shared.config()
	if err != nil {
		return err
	}
	if telErr != nil {
		return telErr
	}
	return cfg.db.Check()
}

// CheckEnv reports an invalid configuration in the variables getenv
// returns, naming the variable, as CheckConfig does but without logging it
// and without touching the process's service: a local runner checks the
// settings it will run with, and says what is wrong once, before it starts
// anything for them (its own PostgreSQL, for one).
func CheckEnv(getenv func(string) string) error {
	s, err := loadSettings(getenv)
	if err != nil {
		return err
	}
	return s.db.Check()
}

// NewLogger writes to w in the functions' log format and level (LOG_FORMAT,
// LOG_LEVEL), for a local runner whose own lines should read like theirs.
func NewLogger(w io.Writer) *slog.Logger { return newLogger(os.Getenv, w) }

// Close closes the shared pool, letting pending writes finish, then flushes
// the spans and metrics still buffered. Local runners call it on shutdown;
// on Cloud Run the SIGTERM handler of flushOnSIGTERM flushes them.
func Close() {
	shared.Close()
	if err := tel.shutdown(); err != nil {
		shared.log.Warn("telemetry not flushed", "error", oneLine(err.Error()))
	}
}

// Limits on what a request or message may carry, with their defaults.
const (
	DefaultMaxContentBytes = 64 << 10
	// DefaultMaxBodyBytes is what a body needs to carry the largest
	// default content however it is escaped (minBodyBytes).
	DefaultMaxBodyBytes = maxEscapedBytes*DefaultMaxContentBytes + bodyEnvelopeBytes
)

// A body must carry any content within MAX_CONTENT_BYTES, however its JSON is
// escaped: a control character takes six bytes as \u0001, the most any byte
// of content can take (a 2- to 4-byte character takes at most 12 bytes as a
// surrogate pair of escapes, 3 per byte). bodyEnvelopeBytes leaves room for
// {"content": ""} and a little whitespace around it.
const (
	maxEscapedBytes   = 6
	bodyEnvelopeBytes = 1 << 10
)

// minBodyBytes is the smallest body limit that never refuses content within
// maxContent for how it is escaped.
func minBodyBytes(maxContent int) int64 {
	return maxEscapedBytes*int64(maxContent) + bodyEnvelopeBytes
}

// settings is the function's configuration beyond the database's.
type settings struct {
	db              store.Config
	maxContentBytes int
	maxBodyBytes    int64
	routes          routes // HTTP_ROUTES: default RoutesAppend
	bodyMemory      int64  // BODY_MEMORY_BYTES: default DefaultBodyMemoryBytes
}

func loadSettings(getenv func(string) string) (settings, error) {
	db, err := store.ConfigFromEnv(getenv)
	if err != nil {
		return settings{}, err
	}
	if err := checkLogSettings(getenv); err != nil {
		return settings{}, err
	}
	if _, err := loadTelemetrySettings(getenv); err != nil {
		return settings{}, err
	}
	s := settings{db: db, maxContentBytes: DefaultMaxContentBytes, maxBodyBytes: DefaultMaxBodyBytes}
	if s.bodyMemory, err = parseBodyMemory(getenv(BodyMemoryVar)); err != nil {
		return settings{}, err
	}
	// HTTP_ROUTES as a literal, so that cmd/pscmessages/cloudbuild_test.go sees it read.
	if s.routes, err = parseRoutes(getenv("HTTP_ROUTES")); err != nil {
		return settings{}, err
	}
	if v := getenv("MAX_CONTENT_BYTES"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 10<<20 {
			return settings{}, &store.ConfigError{Var: "MAX_CONTENT_BYTES", Msg: "must be an integer from 1 to 10485760"}
		}
		s.maxContentBytes = n
	}
	// The body must be able to carry the largest content, JSON-escaped.
	s.maxBodyBytes = minBodyBytes(s.maxContentBytes)
	if v := getenv("MAX_BODY_BYTES"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 2 || n > 64<<20 {
			return settings{}, &store.ConfigError{Var: "MAX_BODY_BYTES", Msg: "must be an integer from 2 to 67108864"}
		}
		s.maxBodyBytes = n
	}
	if need := minBodyBytes(s.maxContentBytes); s.maxBodyBytes < need {
		return settings{}, &store.ConfigError{Var: "MAX_BODY_BYTES", Msg: fmt.Sprintf(
			"must be at least 6 × MAX_CONTENT_BYTES + 1024 (%d), so that content within MAX_CONTENT_BYTES fits however its JSON is escaped", need)}
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
	budget       *bodyBudget // of request bodies, sized by the settings

	db      lazyStore
	project projectID
	// replayDB is Replay's own store: least privilege (see replay.go).
	replayDB lazyStore
	tel      *telemetry // nil when telemetry is off
}

func newService(getenv func(string) string, logTo io.Writer) *service {
	s := &service{getenv: getenv, log: newLogger(getenv, logTo)}
	s.db = lazyStore{open: s.openStore, log: s.log, sem: make(chan struct{}, 1)}
	s.replayDB = lazyStore{open: s.openReplayStore, log: s.log, sem: make(chan struct{}, 1)}
	s.project.getenv = getenv
	return s
}

func (s *service) config() (settings, error) {
	s.settingsOnce.Do(func() {
		s.settings, s.settingsErr = loadSettings(s.getenv)
		if s.settingsErr != nil {
			s.log.Error("invalid configuration", "error", s.settingsErr.Error())
		}
		s.budget = newBodyBudget(cmp.Or(s.settings.bodyMemory, DefaultBodyMemoryBytes))
	})
	return s.settings, s.settingsErr
}

// bodyBudget is the memory budget every request body is read within.
func (s *service) bodyBudget() *bodyBudget {
	s.config()
	return s.budget
}

func (s *service) openStore(ctx context.Context) (*store.Store, error) {
	cfg, err := s.config()
	if err != nil {
		return nil, err
	}
	db := cfg.db
	db.Logger = s.log
	db.Edits = cfg.routes.edits
	return store.Open(ctx, db)
}

// Close closes the pool if it was opened.
func (s *service) Close() {
	s.db.close()
	s.replayDB.close()
}
