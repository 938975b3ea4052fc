-- What each idempotency key was first used for (issue 8), kept apart from the
-- message it created, so that a retry gets the first answer whatever happened
-- to the row since (PUT, DELETE), and a key reused for another request is
-- refused even if the row was edited to match it.
--
--   key          Idempotency-Key ("http:...") or Pub/Sub key ("pubsub:...")
--   fingerprint  sha256 of the content first stored under the key
--   message_id   the id that first answer gave
--   created_at   the created_at that first answer gave
--   recorded_at  when the record was written; it expires
--                store.IdempotencyRetention later
CREATE TABLE IF NOT EXISTS idempotency_keys (
    key         text PRIMARY KEY,
    fingerprint bytea NOT NULL,
    message_id  bigint NOT NULL,
    created_at  timestamptz NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now()
);
-- The writer's cleanup deletes the oldest records first, in bounded batches.
CREATE INDEX IF NOT EXISTS idempotency_keys_recorded_at ON idempotency_keys (recorded_at);

-- Keys stored before this migration keep deduplicating: each gets a record
-- of its row as it is now (its current content is the best fingerprint
-- left). Their retention counts from this migration. This reads messages
-- without blocking its writers: about 10 s for 1,000,000 rows of which half
-- had keys, on the machine of 005's figure.
-- scans: messages
INSERT INTO idempotency_keys (key, fingerprint, message_id, created_at)
SELECT idempotency_key, sha256(convert_to(coalesce(content, ''), 'UTF8')), id, created_at
FROM messages WHERE idempotency_key IS NOT NULL
ON CONFLICT (key) DO NOTHING;

---- create above / drop below ----

DROP TABLE idempotency_keys;
