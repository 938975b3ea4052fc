package store_test

import (
	"errors"
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"

	"example.com/pscmessages/store"
)

// TestDatabaseFaultsAreNotTheRowsFault: a failure on the database's side
// that hits every row (an internal error, corruption, a sequence at its
// limit, a trigger refusing everything) must never be answered ErrInvalid,
// which the event path turns into an acknowledged dead letter. Before the
// fix, class XX counted as a row's fault: the batch was split and every row
// got ErrInvalid.
func TestDatabaseFaultsAreNotTheRowsFault(t *testing.T) {
	ctx := testContext(t)
	raising := func(code string) func(t *testing.T, url string) {
		return func(t *testing.T, url string) {
			_, err := connect(t, url).Exec(ctx, fmt.Sprintf(`
				CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$
				BEGIN RAISE EXCEPTION 'injected fault' USING ERRCODE = '%s'; END $$;
				CREATE TRIGGER refuse BEFORE INSERT ON messages FOR EACH ROW EXECUTE FUNCTION refuse();`, code))
			if err != nil {
				t.Fatal(err)
			}
		}
	}
	cases := []struct {
		name  string
		setup func(t *testing.T, url string)
		code  string
		// rowData is whether the code is one a row's data can cause: a
		// probe must then show the database at fault.
		rowData bool
	}{
		{"internal error XX000", raising("XX000"), "XX000", false},
		{"data corrupted XX001", raising("XX001"), "XX001", false},
		{"index corrupted XX002", raising("XX002"), "XX002", false},
		{"sequence limit 2200H", func(t *testing.T, url string) {
			if _, err := connect(t, url).Exec(ctx, "SELECT setval('messages_id_seq', 9223372036854775807)"); err != nil {
				t.Fatal(err)
			}
		}, "2200H", false},
		{"every row refused 22023", raising("22023"), "22023", true},
		{"every row refused 23514", raising("23514"), "23514", true},
		{"every row refused 22012", raising("22012"), "22012", true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			st, url := openStore(t)
			tc.setup(t, url)
			check := func(what string, err error) {
				t.Helper()
				var pgErr *pgconn.PgError
				switch {
				case err == nil:
					t.Errorf("%s: stored despite the fault", what)
				case errors.Is(err, store.ErrInvalid):
					t.Errorf("%s: %v; a database fault answered as the row's (ErrInvalid)", what, err)
				case !errors.As(err, &pgErr) || pgErr.Code != tc.code:
					t.Errorf("%s: %v; want SQLSTATE %s kept in the error", what, err, tc.code)
				}
			}
			for i, err := range st.CommitBatch([]string{"a", "b", "c", "d", "e"}) {
				check(fmt.Sprintf("row %d of a batch of 5", i), err)
				if tc.rowData && !errors.Is(err, store.ErrUnavailable) {
					t.Errorf("row %d: %v, want ErrUnavailable (redelivered)", i, err)
				}
			}
			// A lone row: keyed (a probe of its own kind) and not (within
			// the batch's failed probe).
			for _, key := range []string{"http:alone", ""} {
				_, err := st.Add(ctx, "alone", key)
				check("a lone Add", err)
				if tc.rowData && !errors.Is(err, store.ErrUnavailable) {
					t.Errorf("a lone Add (key %q): %v, want ErrUnavailable (redelivered)", key, err)
				}
			}
			if n := queryInt(t, url, "SELECT count(*) FROM messages"); n != 0 {
				t.Fatalf("%d rows stored", n)
			}
		})
	}
}

// TestOneBadRowInABatchIsStillInvalid: the batch-wide check does not hide a
// row that is at fault: one poison row among good ones gets ErrInvalid, and
// the good ones are stored.
func TestOneBadRowInABatchIsStillInvalid(t *testing.T) {
	st, url := openStore(t)
	if _, err := connect(t, url).Exec(testContext(t), "ALTER TABLE messages ADD CONSTRAINT no_poison CHECK (content <> 'poison')"); err != nil {
		t.Fatal(err)
	}
	errs := st.CommitBatch([]string{"a", "poison", "c", "d"})
	for i, err := range errs {
		if i == 1 {
			if !errors.Is(err, store.ErrInvalid) {
				t.Errorf("poison row: %v, want ErrInvalid", err)
			}
		} else if err != nil {
			t.Errorf("good row %d: %v", i, err)
		}
	}
	// Two rows with the same fault, among good ones: still each its own.
	errs = st.CommitBatch([]string{"poison", "e", "poison"})
	if !errors.Is(errs[0], store.ErrInvalid) || errs[1] != nil || !errors.Is(errs[2], store.ErrInvalid) {
		t.Errorf("two poison rows and a good one: %v", errs)
	}
	// Every row of a batch refused, each for its own content: the
	// database accepts other rows, so each row is at fault.
	errs = st.CommitBatch([]string{"poison", "poison"})
	if !errors.Is(errs[0], store.ErrInvalid) || !errors.Is(errs[1], store.ErrInvalid) {
		t.Errorf("a batch of two poison rows: %v, want ErrInvalid for both", errs)
	}
	if _, err := st.Add(testContext(t), "poison", ""); !errors.Is(err, store.ErrInvalid) {
		t.Errorf("a lone poison row: %v, want ErrInvalid", err)
	}
	if n := queryInt(t, url, "SELECT count(*) FROM messages"); n != 4 {
		t.Fatalf("%d rows, want 4", n)
	}
}
