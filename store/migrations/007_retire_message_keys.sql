-- Idempotency keys live in idempotency_keys alone. Builds from this one on
-- neither write nor read messages.idempotency_key; builds before it wrote the
-- key into every keyed message, and their cleanup cleared it once the key
-- expired: an UPDATE of every keyed message 7 days after it was stored, on
-- an indexed column, so a non-HOT update with new entries in every index of
-- messages. Dropping the column and its unique index ends that rewrite and
-- the index's upkeep on every insert.
--
-- Both statements change the catalog only: DROP COLUMN marks the column
-- dropped without rewriting the table (its values go as rows are next
-- written), DROP INDEX removes a file. Each needs an ACCESS EXCLUSIVE lock on
-- messages for a moment; the lock_timeout keeps it from queueing behind a
-- long transaction (while it waited, every later query on messages would
-- queue behind it). If it times out, nothing changed; run it again.
--
-- Builds before this one cannot write keyed messages once it has run (their
-- statements name the column): run it once no such build serves. See
-- store/MIGRATIONS.md (Upgrade windows).
SET LOCAL lock_timeout = '10s';
DROP INDEX IF EXISTS messages_idempotency_key_key;
ALTER TABLE messages DROP COLUMN IF EXISTS idempotency_key;

---- create above / drop below ----

-- The column comes back empty: the keys are in idempotency_keys.
SET LOCAL lock_timeout = '10s';
ALTER TABLE messages ADD COLUMN IF NOT EXISTS idempotency_key text;
CREATE UNIQUE INDEX IF NOT EXISTS messages_idempotency_key_key ON messages (idempotency_key);
