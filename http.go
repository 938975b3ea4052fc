package function

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"example.com/pscmessages/store"
)

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
	w, done := s.trackRequest(w, r)
	defer done()
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
		if list.Next != 0 {
			w.Header().Set("Link", fmt.Sprintf(`</?before=%d&limit=%d>; rel="next"`, list.Next, pageLimit(page)))
		}
		writeListing(w, list.Messages, true, "")
		return nil
	case http.MethodPost:
		added, err := s.create(w, r)
		if err != nil {
			return err
		}
		markAlreadyStored(w, added)
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
		next := ""
		if list.Next != 0 {
			next = fmt.Sprintf("/messages?before=%d&limit=%d", list.Next, pageLimit(page))
			w.Header().Set("Link", fmt.Sprintf(`<%s>; rel="next"`, next))
		}
		writeListing(w, list.Messages, false, next)
		return nil
	case http.MethodPost:
		added, err := s.create(w, r)
		if err != nil {
			return err
		}
		markAlreadyStored(w, added)
		w.Header().Set("Location", fmt.Sprintf("/messages/%d", added.ID))
		writeJSON(w, http.StatusCreated, added.Message)
		return nil
	}
	return &apiError{status: http.StatusMethodNotAllowed, msg: "method not allowed", allow: "GET, HEAD, POST"}
}

// serveItem is /messages/{id}.
func (s *service) serveItem(w http.ResponseWriter, r *http.Request, rawID string) error {
	cfg, err := s.config()
	if err != nil {
		return err
	}
	// Before the id is looked at, so a disabled route reveals nothing.
	if err := cfg.routes.checkItemMethod(r.Method); err != nil {
		return err
	}
	id, err := strconv.ParseInt(rawID, 10, 64)
	if err != nil || id <= 0 {
		return &apiError{status: http.StatusNotFound, msg: "message not found"}
	}
	switch r.Method {
	case http.MethodPut, http.MethodPatch:
		content, release, err := s.readContent(w, r, cfg)
		defer release()
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
func (s *service) create(w http.ResponseWriter, r *http.Request) (store.Added, error) {
	cfg, err := s.config()
	if err != nil {
		return store.Added{}, err
	}
	key, err := idempotencyKey(r.Header)
	if err != nil {
		return store.Added{}, err
	}
	content, release, err := s.readContent(w, r, cfg)
	defer release()
	if err != nil {
		return store.Added{}, err
	}
	st, err := s.db.get(r.Context())
	if err != nil {
		return store.Added{}, err
	}
	added, err := st.Add(r.Context(), content, key)
	if errors.Is(err, store.ErrKeyReused) {
		return store.Added{}, &apiError{status: http.StatusUnprocessableEntity, msg: "Idempotency-Key was already used for a request with different content"}
	}
	return added, err
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

// markAlreadyStored tells the client of an idempotent retry that its
// message was stored before; the header's name is the API's, kept.
func markAlreadyStored(w http.ResponseWriter, a store.Added) {
	if a.AlreadyStored {
		w.Header().Set("Idempotent-Replayed", "true")
	}
}
