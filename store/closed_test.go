package store_test

import (
	"context"
	"errors"
	"testing"

	"example.com/pscmessages/store"
)

// TestCallsAfterCloseAreErrClosed: a request that got the store before Close
// may call it after. Every call then answers ErrClosed (a 503 for the HTTP
// API, a redelivery for an event), not pgxpool's bare "closed pool", which
// the API answered 500.
func TestCallsAfterCloseAreErrClosed(t *testing.T) {
	st, _ := openStore(t)
	ctx := context.Background()
	added, err := st.Add(ctx, "before close", "")
	if err != nil {
		t.Fatal(err)
	}
	st.Close()
	calls := map[string]func() error{
		"List": func() error { _, err := st.List(ctx, store.Page{}); return err },
		"Get":  func() error { _, err := st.Get(ctx, added.ID); return err },
		"Update": func() error {
			_, err := st.Update(ctx, added.ID, "changed")
			return err
		},
		"Delete": func() error { return st.Delete(ctx, added.ID) },
		"Add":    func() error { _, err := st.Add(ctx, "after close", ""); return err },
		"AddDeadLetter": func() error {
			return st.AddDeadLetter(ctx, store.DeadLetter{EventID: "1", EventSource: "s", Reason: "r", Payload: []byte("p")})
		},
	}
	for name, call := range calls {
		if err := call(); !errors.Is(err, store.ErrClosed) {
			t.Errorf("%s after Close: %v, want ErrClosed", name, err)
		}
	}
}
