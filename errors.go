package function

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"math"
	"net/http"
	"strconv"
	"time"

	"example.com/pscmessages/cmd/telemetry"
	"example.com/pscmessages/store"
)

// errorClass is how the function answers one class of error: the one
// place where an error becomes a status, a Retry-After, a log line and a
// name for spans. Pub/Sub follows the status: a push delivery answered
// with any of them is not acknowledged and is delivered again, and the pull
// ingester nacks every error it is given. A message that can never be
// stored is not an error there: it is kept in dead_letters and acknowledged.
type errorClass struct {
	// kind names the class in spans and metric labels, never the error's
	// own text; "" takes it from the error (an apiError's status).
	kind string
	// status is the HTTP status; 0 takes the apiError's own.
	status int
	// retryAfter says when to come back (503s): from the lazy pool's
	// backoff when it has one, at least a second.
	retryAfter bool
	// body is the error body's text; "" shows the error's own, which is
	// then written for clients (an apiError, the body budget's).
	body string
	// logLevel and logMsg are the request's log line, with the error as
	// its cause; logMsg "" logs nothing (the cause is logged once
	// elsewhere, or the client's own mistake is on its debug line).
	logLevel slog.Level
	logMsg   string
	// note puts the error's text on the request's debug line.
	note bool
	// causeText logs the cause without its "database unavailable" prefix.
	causeText bool
}

// errorClasses is the table, in order: an error takes the first class it
// matches.
var errorClasses = []struct {
	is    func(error) bool
	class errorClass
}{
	// The body is left unread (readBody closes the connection); a Pub/Sub
	// delivery is delivered again, a client retries.
	{isErr(errOverBudget), errorClass{kind: "over_memory_budget", status: http.StatusServiceUnavailable, retryAfter: true,
		logLevel: slog.LevelWarn, logMsg: "request body not read: the body memory budget is taken; retry later"}},
	// The client left; nobody reads this answer.
	{isErr(context.Canceled), errorClass{kind: "canceled", status: 499, body: "request canceled"}},
	{isAPIError, errorClass{note: true}},
	{isPoison, errorClass{kind: "poison", status: http.StatusInternalServerError, body: "internal error", logLevel: slog.LevelError, logMsg: "request failed"}},
	{isErr(store.ErrNotFound), errorClass{kind: "not_found", status: http.StatusNotFound, body: "message not found"}},
	// Logged at Error once by the lazy pool, naming the migration and the
	// command that applies it.
	{isErr(store.ErrMigrationOffline), errorClass{kind: "misconfigured", status: http.StatusInternalServerError, note: true,
		body: "the database needs a migration that an administrator applies; see the service's logs"}},
	// The cause is logged at Error once (by config or the lazy pool); each
	// request that meets it is a Debug line, not another alarm.
	{isMisconfigured, errorClass{kind: "misconfigured", status: http.StatusInternalServerError, note: true,
		body: "the service is misconfigured; see its logs"}},
	{isDatabaseDeadline, unavailable("deadline_exceeded")},
	{anyErr(store.ErrUnavailable, store.ErrClosed), unavailable("database_unavailable")},
	{isErr(store.ErrSchema), unavailable("schema_not_ready")},
	// Permanent and the request's own: the database refuses this content
	// (a constraint, a limit). The cause, which may name the schema's
	// objects, goes to the log; the client learns not to retry it
	// unchanged.
	{isErr(store.ErrInvalid), errorClass{kind: "refused_by_database", status: http.StatusUnprocessableEntity,
		body:     "the message cannot be stored as given (the database refuses its content); retrying it unchanged will not help",
		logLevel: slog.LevelWarn, logMsg: "request refused: the database cannot store this message"}},
	{isErr(store.ErrKeyReused), internal("refused_by_database")},
	{isErr(context.DeadlineExceeded), internal("deadline_exceeded")},
}

// internalError is the class of what no row names.
var internalError = internal("internal")

func internal(kind string) errorClass {
	return errorClass{kind: kind, status: http.StatusInternalServerError, body: "internal error", logLevel: slog.LevelError, logMsg: "request failed"}
}

func unavailable(kind string) errorClass {
	return errorClass{kind: kind, status: http.StatusServiceUnavailable, retryAfter: true, body: "database unavailable, retry later",
		logLevel: slog.LevelWarn, logMsg: "request failed: database unavailable", causeText: true}
}

// classOf is err's row of errorClasses.
func classOf(err error) errorClass {
	for _, c := range errorClasses {
		if c.is(err) {
			return c.class
		}
	}
	return internalError
}

func isErr(target error) func(error) bool {
	return func(err error) bool { return errors.Is(err, target) }
}

func anyErr(targets ...error) func(error) bool {
	return func(err error) bool {
		for _, t := range targets {
			if errors.Is(err, t) {
				return true
			}
		}
		return false
	}
}

func isAPIError(err error) bool {
	var apiErr *apiError
	return errors.As(err, &apiErr)
}

func isPoison(err error) bool {
	var poison *poisonError
	return errors.As(err, &poison)
}

func isMisconfigured(err error) bool {
	var cfgErr *store.ConfigError
	return errors.As(err, &cfgErr) || errors.Is(err, store.ErrPermanent)
}

// isDatabaseDeadline is a statement or an open that ran out of time: the
// database is unavailable, and spans say that it was a deadline.
func isDatabaseDeadline(err error) bool {
	return errors.Is(err, context.DeadlineExceeded) && anyErr(store.ErrUnavailable, store.ErrClosed, store.ErrSchema)(err)
}

// errorKind names the class of an error for spans and labels: never the
// error's own text.
func errorKind(err error) string {
	c := classOf(err)
	if c.kind == "" {
		var apiErr *apiError
		if errors.As(err, &apiErr) {
			return "http_" + strconv.Itoa(apiErr.status)
		}
	}
	return c.kind
}

// writeError answers err by its class. apiError messages, written for
// clients, are shown; other causes go to the log.
func (s *service) writeError(w http.ResponseWriter, r *http.Request, err error) {
	c := classOf(err)
	telemetry.SpanError(r.Context(), errorKind(err))
	status, body, note := c.status, c.body, err.Error()
	var apiErr *apiError
	if errors.As(err, &apiErr) && c.status == 0 {
		status, body, note = apiErr.status, apiErr.msg, apiErr.msg
		if apiErr.allow != "" {
			w.Header().Set("Allow", apiErr.allow)
		}
	}
	if body == "" {
		body = err.Error()
	}
	if c.retryAfter {
		retry := time.Second
		var unavail *unavailableError
		if errors.As(err, &unavail) {
			retry = unavail.retryAfter
		}
		w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(max(retry, time.Second).Seconds()))))
	}
	if c.note {
		noteError(w, note)
	}
	if c.logMsg != "" {
		cause := err.Error()
		if c.causeText {
			cause = causeText(err)
		}
		s.requestLog(r).Log(r.Context(), c.logLevel, c.logMsg, "error", cause)
	}
	writeJSON(w, status, map[string]string{"error": body})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(v) // a failed write means the client is gone
}
