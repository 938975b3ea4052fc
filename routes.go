package function

import (
	"net/http"

	"example.com/pscmessages/store"
)

// RoutesVar is the environment variable that decides which routes Messages
// answers. Its values are the Routes* constants; unset means RoutesAppend.
const RoutesVar = "HTTP_ROUTES"

// Route modes, the values of HTTP_ROUTES.
const (
	// RoutesAppend (the default) serves the tutorial's contract, GET / and
	// POST /, plus the read and create routes of /messages: GET and POST
	// /messages, GET /messages/{id}. Nothing stored can be changed or
	// removed over HTTP, so a public deployment (allUsers as invoker) cannot
	// be emptied by a loop over the sequential ids.
	RoutesAppend = "append"
	// RoutesAll also serves PUT, PATCH and DELETE /messages/{id}. Set it only
	// where every caller may edit and delete every message: a private
	// service whose invokers are trusted.
	RoutesAll = "all"
)

// routes is a parsed HTTP_ROUTES.
type routes struct {
	edits bool // PUT, PATCH and DELETE /messages/{id}
}

func parseRoutes(v string) (routes, error) {
	switch v {
	case "", RoutesAppend:
		return routes{}, nil
	case RoutesAll:
		return routes{edits: true}, nil
	}
	return routes{}, &store.ConfigError{Var: RoutesVar, Msg: `must be "append" (the default: create and read only) or "all" (also edit and delete)`}
}

// itemAllow is the Allow header of /messages/{id}: only the methods this
// deployment serves.
func (r routes) itemAllow() string {
	if r.edits {
		return "GET, HEAD, PUT, PATCH, DELETE"
	}
	return "GET, HEAD"
}

// checkItemMethod refuses a method /messages/{id} does not serve here.
//
// A disabled edit or delete answers 405 Method Not Allowed, not 403
// Forbidden: the refusal is about the resource on this deployment, not about
// who asks (no credentials would change it), and RFC 9110 (section 15.5.6)
// has 405 carry an Allow header listing the methods the resource currently
// supports, which tells a client exactly what it may do.
func (r routes) checkItemMethod(method string) error {
	switch method {
	case http.MethodGet, http.MethodHead:
		return nil
	case http.MethodPut, http.MethodPatch, http.MethodDelete:
		if r.edits {
			return nil
		}
		return &apiError{status: http.StatusMethodNotAllowed, allow: r.itemAllow(),
			msg: method + " is disabled on this deployment: it serves only creating and reading messages (" + RoutesVar + "=" + RoutesAppend + ")"}
	}
	return &apiError{status: http.StatusMethodNotAllowed, msg: "method not allowed", allow: r.itemAllow()}
}
