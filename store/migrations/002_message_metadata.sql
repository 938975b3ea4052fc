-- Additive columns only. now() is not volatile, so PostgreSQL records the
-- default without rewriting existing rows; they read as created at migration time.
ALTER TABLE messages
    ADD COLUMN IF NOT EXISTS created_at      timestamptz NOT NULL DEFAULT now(),
    ADD COLUMN IF NOT EXISTS updated_at      timestamptz NOT NULL DEFAULT now(),
    ADD COLUMN IF NOT EXISTS idempotency_key text;

-- Building the index reads the whole table (a tutorial's table may be large):
-- scans: messages

-- One row per Idempotency-Key or Pub/Sub message id; NULLs (legacy rows,
-- POSTs without a key) never conflict.
CREATE UNIQUE INDEX IF NOT EXISTS messages_idempotency_key_key ON messages (idempotency_key);

---- create above / drop below ----

DROP INDEX IF EXISTS messages_idempotency_key_key;
ALTER TABLE messages
    DROP COLUMN IF EXISTS idempotency_key,
    DROP COLUMN IF EXISTS updated_at,
    DROP COLUMN IF EXISTS created_at;
