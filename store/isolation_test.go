package store_test

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"example.com/pscmessages/store"
)

// TestBadRowsDoNotFailTheirBatch: rows that PostgreSQL
// refuses share batches with good ones; each bad row gets ErrInvalid and
// every good row is stored.
func TestBadRowsDoNotFailTheirBatch(t *testing.T) {
	st, url := openStore(t)
	ctx := testContext(t)
	// A row the database refuses although validate lets it through, so that
	// the batch statement itself fails and must be split.
	if _, err := connect(t, url).Exec(ctx, "ALTER TABLE messages ADD CONSTRAINT no_poison CHECK (content <> 'poison')"); err != nil {
		t.Fatal(err)
	}
	bad := []struct{ content, key string }{
		{"x", "pubsub:t#a\x00b"},                   // NUL in a key
		{"x", "pubsub:t#\xffid"},                   // invalid UTF-8 in a key
		{"x", "pubsub:t#" + randomText(3000)},      // longer than a btree row
		{"x", "pubsub:" + randomText(8000) + "#1"}, // an 8,000-character source
		{"a\x00b", ""},                             // NUL in content
		{"poison", ""},                             // refused by the database
		{"poison", "http:poison-key"},              // refused by the database, keyed
	}
	const good = 200
	var wg sync.WaitGroup
	var mu sync.Mutex
	var failedGood []error
	for round := range 3 {
		for i := range good {
			wg.Go(func() {
				key := ""
				if i%2 == 0 {
					key = fmt.Sprintf("http:good-%d-%d", round, i)
				}
				content := fmt.Sprintf("good %d %d", round, i)
				a, err := st.Add(ctx, content, key)
				if err == nil && (a.Content != content || a.AlreadyStored) {
					err = fmt.Errorf("answered %+v", a)
				}
				if err != nil {
					mu.Lock()
					failedGood = append(failedGood, err)
					mu.Unlock()
				}
			})
			if i%30 == 0 {
				b := bad[(i/30+round)%len(bad)]
				wg.Go(func() {
					_, err := st.Add(ctx, b.content, b.key)
					if !errors.Is(err, store.ErrInvalid) {
						t.Errorf("Add(%.20q, %.20q) = %v, want ErrInvalid", b.content, b.key, err)
					}
				})
			}
		}
	}
	wg.Wait()
	if len(failedGood) > 0 {
		t.Fatalf("%d of %d good rows failed, e.g. %v", len(failedGood), 3*good, failedGood[0])
	}
	if n := queryInt(t, url, "SELECT count(*) FROM messages"); n != 3*good {
		t.Fatalf("%d rows, want %d", n, 3*good)
	}
}

// TestTwoStoresSharedKeysOppositeOrders, at the store level:
// two pools on one database (as two instances are), each with 64 concurrent
// writers, send the same keys in opposite orders, mixed with keyless rows.
// Nothing may fail (no 40P01 may surface), every key is stored exactly once,
// and every answer for a key names the same row.
func TestTwoStoresSharedKeysOppositeOrders(t *testing.T) {
	a, url := openStore(t)
	ctx := testContext(t)
	b, err := store.Open(ctx, store.Config{ConnString: url, Migrate: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	const writers, rounds = 64, 150
	const keys = writers * rounds
	var mu sync.Mutex
	ids := map[string]int64{}
	var errs []error
	var keyless int
	var wg sync.WaitGroup
	for si, st := range []*store.Store{a, b} {
		for w := range writers {
			wg.Go(func() {
				// Both stores work on the same 64 keys at a time, in
				// opposite orders.
				for round := range rounds {
					i := round*writers + w
					k := i
					if si == 1 {
						k = round*writers + writers - 1 - w
					}
					key := fmt.Sprintf("pubsub:t#%d", k)
					added, err := st.Add(ctx, "content of "+key, key)
					var plain store.Added
					var plainErr error
					if i%5 == 0 {
						plain, plainErr = st.Add(ctx, "no key", "")
					}
					mu.Lock()
					switch {
					case err != nil:
						errs = append(errs, fmt.Errorf("%s: %w", key, err))
					case ids[key] != 0 && ids[key] != added.ID:
						errs = append(errs, fmt.Errorf("%s answered ids %d and %d", key, ids[key], added.ID))
					default:
						ids[key] = added.ID
					}
					if plainErr != nil {
						errs = append(errs, plainErr)
					} else if plain.ID != 0 {
						keyless++
					}
					mu.Unlock()
				}
			})
		}
	}
	wg.Wait()
	if len(errs) > 0 {
		var deadlocks int
		for _, err := range errs {
			if strings.Contains(err.Error(), "40P01") {
				deadlocks++
			}
		}
		t.Fatalf("%d failed writes (%d deadlocks), e.g. %v", len(errs), deadlocks, errs[0])
	}
	// Retries would hide deadlocks from the callers; the key order must
	// prevent them. A backend reports its statistics when it exits.
	a.Close()
	b.Close()
	conn := connect(t, url)
	for range 100 {
		var others int
		if err := conn.QueryRow(ctx, "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()").Scan(&others); err != nil {
			t.Fatal(err)
		}
		if others == 0 {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	var deadlocks int
	if err := conn.QueryRow(ctx, "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()").Scan(&deadlocks); err != nil {
		t.Fatal(err)
	}
	if deadlocks != 0 {
		t.Errorf("PostgreSQL detected %d deadlocks", deadlocks)
	}
	if n := queryInt(t, url, "SELECT count(*) FROM messages m WHERE EXISTS (SELECT FROM idempotency_keys k WHERE k.message_id = m.id)"); n != keys {
		t.Errorf("%d keyed rows, want %d", n, keys)
	}
	if n := queryInt(t, url, "SELECT count(DISTINCT k.key) FROM idempotency_keys k JOIN messages m ON m.id = k.message_id"); n != keys {
		t.Errorf("%d distinct keys, want %d", n, keys)
	}
	if n := queryInt(t, url, "SELECT count(*) FROM messages m WHERE NOT EXISTS (SELECT FROM idempotency_keys k WHERE k.message_id = m.id)"); n != keyless {
		t.Errorf("%d keyless rows, want %d", n, keyless)
	}
}

func queryInt(t testing.TB, url, sql string, args ...any) int {
	t.Helper()
	var n int
	if err := connect(t, url).QueryRow(testContext(t), sql, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}

// TestConflictsAreRetried: a deadlock or serialization failure commits
// nothing and is retried; a key that keeps conflicting fails alone, as
// transient (ErrUnavailable), never as ErrInvalid.
func TestConflictsAreRetried(t *testing.T) {
	st, url := openStore(t)
	ctx := testContext(t)
	conn := connect(t, url)
	// The first two claims of key "http:flaky" fail as a deadlock would;
	// every claim of "http:stuck" fails as a lost unique race would.
	if _, err := conn.Exec(ctx, `
		CREATE SEQUENCE flaky_attempts;
		CREATE FUNCTION conflict() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN
			IF NEW.key = 'http:flaky' AND nextval('flaky_attempts') <= 2 THEN
				RAISE EXCEPTION 'injected deadlock' USING ERRCODE = '40P01';
			END IF;
			IF NEW.key = 'http:stuck' THEN
				RAISE EXCEPTION 'injected unique race' USING ERRCODE = '23505';
			END IF;
			RETURN NEW;
		END $$;
		CREATE TRIGGER conflict BEFORE INSERT ON idempotency_keys FOR EACH ROW EXECUTE FUNCTION conflict();`); err != nil {
		t.Fatal(err)
	}
	if a, err := st.Add(ctx, "x", "http:flaky"); err != nil || a.AlreadyStored {
		t.Fatalf("after two deadlocks: %+v, %v; want it stored", a, err)
	}
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Go(func() {
			key := fmt.Sprintf("http:fine-%d", i)
			if i == 10 {
				key = "http:stuck"
			}
			_, err := st.Add(ctx, "y", key)
			switch {
			case key == "http:stuck" && (!errors.Is(err, store.ErrUnavailable) || errors.Is(err, store.ErrInvalid)):
				t.Errorf("the stuck key: %v, want ErrUnavailable", err)
			case key != "http:stuck" && err != nil:
				t.Errorf("%s: %v", key, err)
			}
		})
	}
	wg.Wait()
	if n := queryInt(t, url, "SELECT count(*) FROM messages"); n != 20 {
		t.Fatalf("%d rows, want 20", n)
	}
}
