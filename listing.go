package function

import (
	"bufio"
	"encoding/json"
	"net/http"

	"example.com/pscmessages/store"
)

// writeListing answers a page as {"messages": [...]} (plus "next" when given),
// encoding one message at a time straight to the connection. Encoding the page
// as one value (json.Encoder buffers a whole value before it writes) held a
// second copy of it, and more while that buffer grew: 1,000 rows of 64 KB are
// a 65 MB answer. The page itself is bounded by store.List, in rows and bytes.
func writeListing(w http.ResponseWriter, msgs []store.Message, item func(store.Message) any, next string) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(http.StatusOK)
	bw := bufio.NewWriterSize(w, 32<<10)
	enc := json.NewEncoder(bw)
	enc.SetEscapeHTML(false)
	bw.WriteString(`{"messages":[`)
	for i, m := range msgs {
		if i > 0 {
			bw.WriteByte(',')
		}
		if enc.Encode(item(m)) != nil {
			return // the client is gone
		}
	}
	bw.WriteByte(']')
	if next != "" {
		bw.WriteString(`,"next":`)
		enc.Encode(next)
	}
	bw.WriteString("}\n")
	bw.Flush()
}
