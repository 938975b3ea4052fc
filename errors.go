package function

import (
	"context"
	"encoding/json"
	"errors"
	"math"
	"net/http"
	"strconv"
	"time"

	"example.com/pscmessages/store"
)

// apiError messages, written for clients, are shown; causes go to the log.
func (s *service) writeError(w http.ResponseWriter, r *http.Request, err error) {
	var apiErr *apiError
	var cfgErr *store.ConfigError
	var unavail *unavailableError
	spanError(r.Context(), errorKind(err))
	switch {
	case errors.Is(err, errOverBudget):
		// The body is left unread (readBody closes the connection); a
		// Pub/Sub delivery is delivered again, a client retries.
		w.Header().Set("Retry-After", "1")
		s.requestLog(r).Warn("request body not read: the body memory budget is taken; retry later", "error", err.Error())
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": err.Error()})
	case errors.Is(err, context.Canceled):
		// The client left; nobody reads this answer.
		writeJSON(w, 499, map[string]string{"error": "request canceled"})
	case errors.As(err, &apiErr):
		if apiErr.allow != "" {
			w.Header().Set("Allow", apiErr.allow)
		}
		noteError(w, apiErr.msg) // on the request's debug line
		writeJSON(w, apiErr.status, map[string]string{"error": apiErr.msg})
	case errors.Is(err, store.ErrNotFound):
		writeJSON(w, http.StatusNotFound, map[string]string{"error": "message not found"})
	case errors.Is(err, store.ErrMigrationOffline):
		// Logged at Error once by the lazy pool, naming the migration and
		// the command that applies it.
		noteError(w, err.Error())
		writeJSON(w, http.StatusInternalServerError, map[string]string{"error": "the database needs a migration that an administrator applies; see the service's logs"})
	case errors.As(err, &cfgErr), errors.Is(err, store.ErrPermanent):
		// The cause is logged at Error once (by config or the lazy pool);
		// each request that meets it is a Debug line, not another alarm.
		noteError(w, err.Error())
		writeJSON(w, http.StatusInternalServerError, map[string]string{"error": "the service is misconfigured; see its logs"})
	case errors.Is(err, store.ErrUnavailable), errors.Is(err, store.ErrSchema), errors.Is(err, store.ErrClosed):
		retry := time.Second
		if errors.As(err, &unavail) {
			retry = unavail.retryAfter
		}
		w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(max(retry, time.Second).Seconds()))))
		s.requestLog(r).Warn("request failed: database unavailable", "error", causeText(err))
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": "database unavailable, retry later"})
	case errors.Is(err, store.ErrInvalid):
		// Permanent and the request's own: the database refuses this
		// content (a constraint, a limit). The cause, which may name the
		// schema's objects, goes to the log; the client learns not to
		// retry it unchanged.
		s.requestLog(r).Warn("request refused: the database cannot store this message", "error", err.Error())
		writeJSON(w, http.StatusUnprocessableEntity, map[string]string{"error": "the message cannot be stored as given (the database refuses its content); retrying it unchanged will not help"})
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
