package function

import (
	"bytes"
	"io"
	"net/http"
)

// Bounds of the event path. A Pub/Sub message may carry 10 MB of data, which
// a push delivery carries base64-encoded (13.4 MB) in a JSON envelope; the
// function stores at most MAX_CONTENT_BYTES of it. So a delivery is read into
// memory only up to what a storable message can need (deliveryLimit); a larger
// one is streamed past, never held, to learn its size and the ids that name
// it, and is answered 5xx: it is not acknowledged, so Pub/Sub keeps it whole
// (and moves it to the subscription's dead-letter topic after its last
// attempt) instead of the function keeping a part of it.
const (
	// envelopeAllowance is what a delivery may carry besides the base64 of
	// its data: the JSON envelope, the ids and up to 100 attributes (Pub/Sub
	// allows 256-byte keys and 1024-byte values).
	envelopeAllowance = 256 << 10
	// maxDeliveryBytes is how much of an oversized delivery is read before
	// the rest is left unread: more than any Pub/Sub delivery (10 MB of
	// data, base64 in JSON) can be.
	maxDeliveryBytes = 32 << 20
	// oversizedChunk is how much of an oversized delivery is held at once
	// while it is streamed past.
	oversizedChunk = 64 << 10
)

// deliveryLimit is the largest delivery decoded: the base64 of the largest
// body a message may be sent as (MAX_BODY_BYTES), plus the envelope.
func deliveryLimit(cfg settings) int64 {
	return (cfg.maxBodyBytes+2)/3*4 + envelopeAllowance
}

// delivery is the body of one request to IngestPubSub, as read.
type delivery struct {
	// body is the whole body when it is at most the limit; nil otherwise.
	body []byte
	// oversized is set when the body exceeded the limit; size is then as
	// much of it as was read (all of it unless it exceeded
	// maxDeliveryBytes too).
	oversized bool
	size      int64
	// fields are the ids an oversized delivery carries, as far as they
	// could be found without decoding it.
	fields  *fieldSniffer
	release func()
}

// readDelivery reads r's body within limit bytes and the process's body
// budget (see readBody); w may be nil (a replay has no connection). The
// caller must call d.release once done with d.body.
func (s *service) readDelivery(w http.ResponseWriter, r *http.Request, limit int64) (*delivery, error) {
	most := limit + 1 // one more than the limit tells an oversized body
	if r.ContentLength > limit {
		most = oversizedChunk // it is streamed past, never held
	}
	b, eof, err := s.readBody(w, r, most)
	if err != nil {
		return nil, err
	}
	d := &delivery{release: b.release}
	if eof && int64(len(b.buf)) <= limit {
		d.body = b.buf
		return d, nil
	}
	// Oversized: count it without holding it, and pick out what names the
	// event on the way, for the log.
	buf := b.buf
	d.oversized = true
	d.fields = newFieldSniffer("id", "source", "type", "messageId", "message_id", "subscription")
	d.fields.Write(buf)
	rest := newStallReader(w, r)
	defer rest.done()
	chunk := buf[:min(cap(buf), oversizedChunk)]
	n, err := io.CopyBuffer(d.fields, io.LimitReader(rest, maxDeliveryBytes-int64(len(buf))), chunk)
	if err != nil {
		d.release()
		return nil, bodyError(err)
	}
	d.size = int64(len(buf)) + n
	return d, nil
}

// fieldSniffer finds the first string value of some JSON keys in a stream it
// is written, holding no more than maxSniffedValue bytes of each: it names the
// event of an oversized delivery, which is never decoded whole. It matches the
// compact form `"key":"value"` that Pub/Sub and Eventarc send. Inside a JSON
// string every quote is escaped, so `"key":"` can only be structure, though
// possibly of a nested object: the result names a dead letter, it keys
// nothing (a dead letter is deduplicated by the digest of the whole delivery).
type fieldSniffer struct {
	keys   []string
	pats   []string // `"key":"` per key
	found  map[string]string
	match  []int  // per key: bytes of its pattern matched so far
	active int    // index of the key whose value is being read, or -1
	value  []byte // the value read so far
}

const maxSniffedValue = maxSourceBytes + 1 // one more than any key part may be

func newFieldSniffer(keys ...string) *fieldSniffer {
	f := &fieldSniffer{keys: keys, found: map[string]string{}, match: make([]int, len(keys)), active: -1}
	for _, k := range keys {
		f.pats = append(f.pats, `"`+k+`":"`)
	}
	return f
}

func (f *fieldSniffer) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		if f.active < 0 && f.idle() {
			// Every pattern starts with a quote: skip to the next one
			// (base64 data, the bulk of a delivery, has none).
			i := bytes.IndexByte(p, '"')
			if i < 0 {
				break
			}
			p = p[i:]
		}
		f.step(p[0])
		p = p[1:]
	}
	return n, nil
}

// idle reports whether no pattern is partly matched.
func (f *fieldSniffer) idle() bool {
	for _, m := range f.match {
		if m != 0 {
			return false
		}
	}
	return true
}

func (f *fieldSniffer) step(c byte) {
	if f.active >= 0 {
		if c == '"' && (len(f.value) == 0 || f.value[len(f.value)-1] != '\\') {
			f.found[f.keys[f.active]] = string(f.value)
			f.active, f.value = -1, f.value[:0]
		} else if len(f.value) < maxSniffedValue {
			f.value = append(f.value, c)
		}
		return
	}
	for i, pat := range f.pats {
		switch {
		case c == pat[f.match[i]]:
			f.match[i]++
		case c == pat[0]:
			f.match[i] = 1
		default:
			f.match[i] = 0
		}
		if f.match[i] == len(pat) {
			f.match[i] = 0
			if _, seen := f.found[f.keys[i]]; !seen {
				f.active = i
				clear(f.match)
				return
			}
		}
	}
}
