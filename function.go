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
	"time"

	"github.com/GoogleCloudPlatform/functions-framework-go/functions"

	"example.com/pscmessages/cmd/logging"
	"example.com/pscmessages/cmd/telemetry"
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
	// Settings that fail the check fail every request as a misconfiguration
	// and stop a runner at start, each saying why: said here too, they were
	// said twice. Valid settings whose SDK could not start (no credentials,
	// say) leave the function serving without telemetry, which only this
	// line tells.
	if telErr != nil && telemetry.Check(os.Getenv) == nil {
		shared.log.Error("OpenTelemetry is off: its setup failed", "error", telErr.Error())
	}
	tel.flushOnSIGTERM(os.Getenv)
}

// shared is the process's one service: the pool it opens on first use is
// reused by every request and event the instance handles.
var shared = newService(os.Getenv, os.Stdout)

// tel is the process's OpenTelemetry SDK, nil when the OTEL_* variables do
// not ask for it (see package telemetry); an invalid one is reported by config.
var tel, telErr = setupTelemetry(os.Getenv, nil)

// The entry points as served: in a server span each when telemetry is on.
var (
	messagesEntry = tel.instrument(http.HandlerFunc(shared.ServeHTTP), messagesRoute)
	eventEntry    = tel.instrument(http.HandlerFunc(shared.serveEvent), deliveryRoute)
)

// Messages is the HTTP entry point.
func Messages(w http.ResponseWriter, r *http.Request) { messagesEntry.ServeHTTP(w, r) }

// serveEvent is the deployed IngestPubSub entry point: one HTTP delivery of a
// CloudEvent (binary or structured mode) or a legacy Pub/Sub push body.
func serveEvent(w http.ResponseWriter, r *http.Request) { eventEntry.ServeHTTP(w, r) }

// Config is the function's whole configuration, each variable read once by
// ConfigFromEnv. The deployed entry points read theirs from the environment
// on first use; a local runner reads it at start, before it starts anything
// for it, may point it at a database of its own (WithDatabaseURL), and
// serves it with New.
type Config struct{ s settings }

// ConfigFromEnv reads the configuration from the variables getenv returns
// (os.Getenv, or a map in tests). An error names the variable at fault.
func ConfigFromEnv(getenv func(string) string) (Config, error) {
	s, err := loadSettings(getenv)
	return Config{s}, err
}

// WithDatabaseURL returns c with its database at url, a pgx connection
// string, as if DATABASE_URL had been url; its other settings are unchanged.
func (c Config) WithDatabaseURL(url string) Config {
	c.s.db.ConnString = url
	return c
}

// Database is the database part of the configuration, for tools that reach
// the same database as the function (an operator's connection).
func (c Config) Database() store.Config { return c.s.db }

// Edits reports whether Messages serves PUT, PATCH and DELETE
// /messages/{id} (HTTP_ROUTES=all), so that a runner can say so at start.
func (c Config) Edits() bool { return c.s.routes.edits }

// Check reads the files the configuration names (DB_ROOT_CERT) and parses
// the connection settings as opening the pool will, without touching the
// network, so that a runner stops at start on what would fail every request.
func (c Config) Check() error { return c.s.db.Check() }

// Logger writes to w in the configured log format and level (LOG_FORMAT,
// LOG_LEVEL), for a local runner whose own lines should read like the
// function's.
func (c Config) Logger(w io.Writer) *slog.Logger { return logging.New(w, c.s.log) }

// NewLogger writes to w in the functions' log format and level (LOG_FORMAT,
// LOG_LEVEL), for a local runner whose own lines should read like theirs.
func NewLogger(w io.Writer) *slog.Logger {
	o, _ := logOptions(os.Getenv)
	return logging.New(w, o)
}

// Log settings, read once by ConfigFromEnv.
const (
	// LogLevelVar is debug, info (the default), warn or error. At debug
	// every request and delivery logs one line.
	LogLevelVar = "LOG_LEVEL"
	// LogFormatVar is json (Cloud Logging's structured lines) or text
	// (short human-readable lines). The default is text when the output is
	// a terminal, json otherwise, as on Cloud Run.
	LogFormatVar = "LOG_FORMAT"
)

// logOptions reads LOG_LEVEL and LOG_FORMAT. A variable that is invalid is
// reported, and its default is in the options returned, so that a process
// told to log badly still logs, and says why it serves nothing.
func logOptions(getenv func(string) string) (logging.Options, error) {
	var o logging.Options
	level, levelErr := logging.ParseLevel(getenv(LogLevelVar))
	format, formatErr := logging.ParseFormat(getenv(LogFormatVar))
	if levelErr == nil {
		o.Level = level
	}
	if formatErr == nil {
		o.Format = format
	}
	switch {
	case levelErr != nil:
		return o, &store.ConfigError{Var: LogLevelVar, Msg: levelErr.Error()}
	case formatErr != nil:
		return o, &store.ConfigError{Var: LogFormatVar, Msg: formatErr.Error()}
	}
	return o, nil
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
	// timeout is CLOUD_RUN_TIMEOUT_SECONDS: 0 leaves a request's context
	// without a deadline of the framework's.
	timeout time.Duration
	log     logging.Options // LOG_LEVEL, LOG_FORMAT
	// getenv returns the variables read for trace correlation
	// (onceReadVars) as they were when the settings were loaded.
	getenv func(string) string
}

// onceReadVars are the variables that the trace correlation reads, kept in
// settings as they were at load.
var onceReadVars = []string{"GOOGLE_CLOUD_PROJECT", "GCP_PROJECT", "GCLOUD_PROJECT", "K_SERVICE", "GCE_METADATA_HOST"}

// snapshotEnv returns a getenv for names, each read once now.
func snapshotEnv(getenv func(string) string, names []string) func(string) string {
	vals := make(map[string]string, len(names))
	for _, n := range names {
		vals[n] = getenv(n)
	}
	return func(name string) string { return vals[name] }
}

func loadSettings(getenv func(string) string) (settings, error) {
	db, err := store.ConfigFromEnv(getenv)
	if err != nil {
		return settings{}, err
	}
	logOpts, err := logOptions(getenv)
	if err != nil {
		return settings{}, err
	}
	if err := telemetry.Check(getenv); err != nil {
		return settings{}, err
	}
	s := settings{db: db, maxContentBytes: DefaultMaxContentBytes, maxBodyBytes: DefaultMaxBodyBytes, log: logOpts, getenv: snapshotEnv(getenv, onceReadVars)}
	if s.bodyMemory, err = parseBodyMemory(getenv(BodyMemoryVar)); err != nil {
		return settings{}, err
	}
	if secs, err := strconv.Atoi(getenv("CLOUD_RUN_TIMEOUT_SECONDS")); err == nil {
		s.timeout = time.Duration(secs) * time.Second
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
	load func() (settings, error) // called once, on first use
	log  *slog.Logger

	settingsOnce sync.Once // the environment does not change in a process
	settings     settings
	settingsErr  error
	budget       *bodyBudget // of request bodies, sized by the settings

	db      lazyStore
	project projectID
	// replayDB is Replay's own store: least privilege (see replay.go).
	replayDB lazyStore
	tel      *instruments // nil when telemetry is off
}

// newService is a service whose settings are read through getenv on first
// use, as the deployed entry points' are; its logger is made at once, so
// that an invalid setting is logged (an invalid log setting's default
// stands in for it).
func newService(getenv func(string) string, logTo io.Writer) *service {
	logOpts, _ := logOptions(getenv)
	return buildService(func() (settings, error) { return loadSettings(getenv) }, logging.New(logTo, logOpts), getenv)
}

// buildService is a service on the settings load returns, logging to log,
// with getenv giving the variables of trace correlation.
func buildService(load func() (settings, error), log *slog.Logger, getenv func(string) string) *service {
	s := &service{load: load, log: log}
	s.db = lazyStore{open: s.openStore, log: s.log, sem: make(chan struct{}, 1)}
	s.replayDB = lazyStore{open: s.openReplayStore, log: s.log, sem: make(chan struct{}, 1)}
	s.project.getenv = getenv
	return s
}

func (s *service) config() (settings, error) {
	s.settingsOnce.Do(func() {
		s.settings, s.settingsErr = s.load()
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
