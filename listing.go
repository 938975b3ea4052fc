package function

import (
	"bytes"
	"encoding/json"
	"net/http"
	"sync"

	"example.com/pscmessages/store"
)

// listingFlush is how much of an answer is gathered before it is written:
// a page of short messages goes out in one write, a page of large ones in
// pieces of about this size.
const listingFlush = 32 << 10

var listingBufs = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// writeListing answers a page as {"messages": [...]} (plus "next" when given):
// the messages, or with contentsOnly their contents as strings. It encodes
// the page in runs of about listingFlush bytes of content and writes each run
// as it is done. Encoding the page as one value (json.Encoder buffers a whole
// value before it writes) held a second copy of it, and more while that buffer
// grew: 1,000 rows of 64 KB were a 65 MB answer. The page itself is bounded by
// store.List, in rows and bytes.
func writeListing(w http.ResponseWriter, msgs []store.Message, contentsOnly bool, next string) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(http.StatusOK)
	buf := listingBufs.Get().(*bytes.Buffer)
	defer func() {
		if buf.Cap() <= 4*listingFlush { // a buffer grown by one huge message is not kept
			buf.Reset()
			listingBufs.Put(buf)
		}
	}()
	buf.Reset()
	enc := json.NewEncoder(buf)
	enc.SetEscapeHTML(false)
	buf.WriteString(`{"messages":[`)
	var contents []string
	for start := 0; start < len(msgs); {
		end, size := start, 0
		for end < len(msgs) && (end == start || size+len(msgs[end].Content) <= listingFlush) {
			size += len(msgs[end].Content)
			end++
		}
		var run any = msgs[start:end]
		if contentsOnly {
			contents = contents[:0]
			for _, m := range msgs[start:end] {
				contents = append(contents, m.Content)
			}
			run = contents
		}
		if start > 0 {
			buf.WriteByte(',')
		}
		// The run encodes as [a,b,...]\n; keep a,b,...
		at := buf.Len()
		enc.Encode(run) // messages or strings: cannot fail
		b := buf.Bytes()
		copy(b[at:], b[at+1:])
		buf.Truncate(buf.Len() - len("[]\n"))
		if buf.Len() >= listingFlush {
			if _, err := w.Write(buf.Bytes()); err != nil {
				return // the client is gone
			}
			buf.Reset()
		}
		start = end
	}
	buf.WriteByte(']')
	if next != "" {
		buf.WriteString(`,"next":`)
		enc.Encode(next)            // a string: cannot fail
		buf.Truncate(buf.Len() - 1) // its newline would split the answer's line
	}
	buf.WriteString("}\n")
	w.Write(buf.Bytes())
}
