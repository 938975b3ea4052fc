package function

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strconv"
	"sync"
	"time"

	"example.com/pscmessages/store"
)

// BodyMemoryVar names the process-wide memory budget of request bodies: the
// bytes that every body being read and decoded (POST, PUT and PATCH of
// Messages, every delivery of IngestPubSub) may hold together. A body counts
// decodeCopies times what has arrived of it (the bytes, the decoded JSON,
// the content, the copy the database driver sends), never what it declares
// it will send, so a caller that declares a large body and sends nothing
// holds nothing. A body that needs more than is free waits up to budgetWait,
// then is answered 503 with Retry-After. One body alone may take the whole
// budget, so any body within the size limits fits when the process is idle.
const BodyMemoryVar = "BODY_MEMORY_BYTES"

// DefaultBodyMemoryBytes is BODY_MEMORY_BYTES unset: 64 MiB, the room of ~42
// POSTs of the largest default body (MAX_BODY_BYTES, counted decodeCopies
// times), and of far more of the small ones most are; deployed, Cloud Run's
// --concurrency admits fewer requests than that at once.
const DefaultBodyMemoryBytes = 64 << 20

// decodeCopies is how many times over a body is held by the time it is
// stored: the body, the decoded JSON, the content, and the copy the
// database driver sends.
const decodeCopies = 4

// budgetWait is how long a body waits for its share of the budget before it
// is answered 503 (with Retry-After); a Pub/Sub delivery is then delivered
// again later.
var budgetWait = 10 * time.Second

// bodyStallTimeout is the longest a body may go without a byte arriving
// before it is answered 408 and its connection closed: a sender that stalls
// gives up its goroutine and connection, not only the budget it never
// filled. Like nginx's client_body_timeout, it is a gap between reads, not
// a bound on the whole body; the server's own ReadTimeout and the request's
// deadline still bound that.
var bodyStallTimeout = 20 * time.Second

// readChunk is how much is read before it is counted against the budget: a
// body that has not arrived holds only this, as net/http's own 4 KiB read
// buffer of its connection does.
const readChunk = 4 << 10

// bodyBudget is the process-wide memory budget of request bodies. Bodies
// reserve it as they arrive, so a body that has started holds part of what
// it will need, and bodies that all wait for more while holding the rest
// would wait for each other. So a body that already holds some (a grower)
// is served before one that holds nothing yet, oldest first; and when every
// body holding budget is a grower waiting for more, the one that began
// waiting last gives up what it holds and is answered 503, until the oldest
// can go on. A wait is also bounded by budgetWait and the request's context.
type bodyBudget struct {
	size int64

	mu      sync.Mutex
	free    int64
	holders int             // bodies holding some of the budget
	growers []*budgetWaiter // holders waiting for more, in order of arrival
	fresh   []*budgetWaiter // bodies holding nothing, in order of arrival
}

type budgetWaiter struct {
	need, holding int64
	done          chan error // one answer: nil (granted) or why not
}

func newBodyBudget(size int64) *bodyBudget {
	budgetLimit.Store(size)
	return &bodyBudget{size: size, free: size}
}

// acquire adds n to the holding a body already has. When it fails, the body
// holds nothing any more: what it held is returned to the budget.
func (b *bodyBudget) acquire(ctx context.Context, holding, n int64) error {
	b.mu.Lock()
	queue := &b.fresh
	if holding > 0 {
		queue = &b.growers
	}
	if len(*queue) == 0 && (holding > 0 || len(b.growers) == 0) && b.free >= n {
		b.take(holding, n)
		b.mu.Unlock()
		return nil
	}
	w := &budgetWaiter{need: n, holding: holding, done: make(chan error, 1)}
	*queue = append(*queue, w)
	b.settle()
	b.mu.Unlock()
	timer := time.NewTimer(budgetWait)
	defer timer.Stop()
	var why error
	select {
	case err := <-w.done:
		return err
	case <-ctx.Done():
		why = ctx.Err()
	case <-timer.C:
		why = errOverBudget
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if i := slices.Index(*queue, w); i >= 0 { // still waiting: give up
		*queue = slices.Delete(*queue, i, i+1)
		if holding > 0 {
			b.give(holding)
		}
		b.settle()
		return why
	}
	return <-w.done // answered meanwhile
}

// release returns what a body holds.
func (b *bodyBudget) release(held int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.give(held)
	b.settle()
}

// take and give move budget to and from a body; called with mu held.
func (b *bodyBudget) take(holding, n int64) {
	b.free -= n
	budgetInUse.Add(n)
	if holding == 0 {
		b.holders++
	}
}

func (b *bodyBudget) give(held int64) {
	b.free += held
	budgetInUse.Add(-held)
	b.holders--
}

// settle answers the waiters that fit, growers first, and breaks a wait of
// every holder for every other. Called with mu held.
func (b *bodyBudget) settle() {
	for {
		switch {
		case len(b.growers) > 0:
			w := b.growers[0]
			if b.free >= w.need {
				b.growers = b.growers[1:]
				b.take(w.holding, w.need)
				w.done <- nil
				continue
			}
			if len(b.growers) < b.holders {
				return // a body that is reading or storing will give some back
			}
			// Every holder waits for more: the last to wait gives way.
			last := b.growers[len(b.growers)-1]
			b.growers = b.growers[:len(b.growers)-1]
			b.give(last.holding)
			last.done <- errOverBudget
		case len(b.fresh) > 0 && b.free >= b.fresh[0].need:
			w := b.fresh[0]
			b.fresh = b.fresh[1:]
			b.take(0, w.need)
			w.done <- nil
		default:
			return
		}
	}
}

// errOverBudget is a body that found no room in the memory budget within
// budgetWait; it is answered 503 with Retry-After.
var errOverBudget = errors.New("too many request bodies in memory; retry later")

// errBodyStalled is a body that stopped arriving (bodyStallTimeout, the
// server's ReadTimeout or the request's deadline); it is answered 408.
var errBodyStalled = &apiError{status: http.StatusRequestTimeout, msg: "the request body stopped arriving; send it again"}

// heldBody is a body, or its first bytes, read into memory within the budget.
type heldBody struct {
	buf    []byte
	held   int64 // reserved from budget
	budget *bodyBudget
}

// release gives back what the body reserved; buf must not be used after.
func (b *heldBody) release() {
	if b.held > 0 {
		b.budget.release(b.held)
		b.held = 0
	}
	b.buf = nil
}

// grow makes room for at least need bytes in buf (at most ceiling),
// reserving decodeCopies times its new capacity (see bodyBudget.acquire).
// Capacity at most doubles, so what is reserved stays within twice what has
// arrived.
func (b *heldBody) grow(ctx context.Context, need, ceiling int64) error {
	newCap := min(max(2*int64(cap(b.buf)), need, readChunk), ceiling)
	if weight := min(decodeCopies*newCap, b.budget.size); weight > b.held {
		if err := b.budget.acquire(ctx, b.held, weight-b.held); err != nil {
			b.held = 0 // acquire gave it back
			return err
		}
		b.held = weight
	}
	grown := make([]byte, len(b.buf), newCap)
	copy(grown, b.buf)
	b.buf = grown
	return nil
}

// readBody reads r's body into memory until EOF or until it holds most bytes,
// reserving from the budget only what has arrived. eof tells whether the
// body ended within most bytes. On an error, or when the body was not read to
// its end, the answer closes the connection (the rest is never read). The
// caller must release the body; after an error it holds nothing.
func (s *service) readBody(w http.ResponseWriter, r *http.Request, most int64) (_ *heldBody, eof bool, _ error) {
	b := &heldBody{budget: s.bodyBudget()}
	ceiling := most
	if n := r.ContentLength; n >= 0 && n < most {
		ceiling = n // what is declared is an upper bound, never a reservation
	}
	body := newStallReader(w, r)
	defer body.done()
	var chunk [readChunk]byte
	for int64(len(b.buf)) < most {
		var p []byte
		direct := cap(b.buf) > len(b.buf) // room already reserved
		if direct {
			p = b.buf[len(b.buf):cap(b.buf)]
		} else {
			p = chunk[:min(int64(len(chunk)), most-int64(len(b.buf)))]
		}
		n, err := body.Read(p)
		if direct {
			b.buf = b.buf[:len(b.buf)+n]
		} else if n > 0 {
			if gerr := b.grow(r.Context(), int64(len(b.buf)+n), max(ceiling, int64(len(b.buf)+n))); gerr != nil {
				b.release()
				closeConnection(w)
				return nil, false, gerr
			}
			b.buf = append(b.buf, p[:n]...)
		}
		if errors.Is(err, io.EOF) {
			return b, true, nil
		}
		if err != nil {
			b.release()
			closeConnection(w)
			return nil, false, bodyError(err)
		}
	}
	closeConnection(w)
	return b, false, nil
}

// bodyError is a body that could not be read: it stalled, or the client
// left (then nobody reads the answer).
func bodyError(err error) error {
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return errBodyStalled
	}
	var tooBig *http.MaxBytesError
	if errors.As(err, &tooBig) {
		return err
	}
	return &apiError{status: http.StatusBadRequest, msg: "reading the request body failed: " + err.Error()}
}

// closeConnection has net/http close the connection after the answer: the
// rest of the body is not read, and a server that drained it (net/http
// reads up to 256 KiB of an unread body to keep a connection) would read
// bytes nobody wants from a sender it has already refused.
func closeConnection(w http.ResponseWriter) {
	if w != nil {
		w.Header().Set("Connection", "close")
	}
}

// stallReader reads a request body with a read deadline renewed before each
// read (bodyStallTimeout), never later than the server's ReadTimeout or the
// request's deadline. It does nothing where the connection offers no
// deadlines (http.ResponseController says so) or without a ResponseWriter.
type stallReader struct {
	r     io.Reader
	rc    *http.ResponseController
	limit time.Time // zero: none
	ended bool      // the body was read to its end
}

func newStallReader(w http.ResponseWriter, r *http.Request) *stallReader {
	s := &stallReader{r: r.Body}
	if w == nil {
		return s
	}
	s.rc = http.NewResponseController(w)
	if srv, ok := r.Context().Value(http.ServerContextKey).(*http.Server); ok && srv.ReadTimeout > 0 {
		// Approximately the server's own whole-request deadline, which a
		// renewed deadline would otherwise replace.
		s.limit = time.Now().Add(srv.ReadTimeout)
	}
	if d, ok := r.Context().Deadline(); ok && (s.limit.IsZero() || d.Before(s.limit)) {
		s.limit = d
	}
	return s
}

func (s *stallReader) Read(p []byte) (int, error) {
	if s.rc != nil {
		d := time.Now().Add(bodyStallTimeout)
		if !s.limit.IsZero() && s.limit.Before(d) {
			d = s.limit
		}
		if s.rc.SetReadDeadline(d) != nil {
			s.rc = nil // not supported here: the server's timeouts alone apply
		}
	}
	n, err := s.r.Read(p)
	if errors.Is(err, io.EOF) {
		s.ended = true
	}
	return n, err
}

// done lifts the deadline once the body is read to its end: net/http keeps
// reading the connection in the background to notice a client that leaves,
// and a deadline passing then would cancel the request's context mid-work.
// A body left unread keeps a deadline that has passed, because after the
// handler net/http drains up to 256 KiB of an unread body, and without a
// deadline a sender trickling it would hold the connection for as long as
// it likes.
func (s *stallReader) done() {
	if s.rc == nil {
		return
	}
	if s.ended {
		_ = s.rc.SetReadDeadline(time.Time{})
	} else {
		_ = s.rc.SetReadDeadline(time.Now())
	}
}

// parseBodyMemory reads BODY_MEMORY_BYTES.
func parseBodyMemory(v string) (int64, error) {
	if v == "" {
		return DefaultBodyMemoryBytes, nil
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 1<<20 || n > 1<<40 {
		return 0, &store.ConfigError{Var: BodyMemoryVar, Msg: fmt.Sprintf("must be an integer from %d (1 MiB) to %d (1 TiB)", 1<<20, int64(1)<<40)}
	}
	return n, nil
}
