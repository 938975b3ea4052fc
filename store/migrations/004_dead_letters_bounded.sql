-- Dead letters bounded in size and keyed by a digest (issue 8).
--
-- payload keeps at most a prefix of the event (store.MaxDeadLetterPayload);
-- payload_size and payload_sha256 describe the whole of it. dedupe_key is
-- sha256 over the event's source, its id and payload_sha256 (see
-- deadLetterKey in store/deadletters.go): a redelivery of the same event is
-- kept once, while a reused id with a different payload is kept as a
-- separate dead letter. The old UNIQUE (event_source, event_id) was a btree
-- over raw text, which an 8,000-character source or a 3,000-character id
-- overflows; a 32-byte digest cannot.
ALTER TABLE dead_letters
    ADD COLUMN IF NOT EXISTS payload_size   bigint,
    ADD COLUMN IF NOT EXISTS payload_sha256 bytea,
    ADD COLUMN IF NOT EXISTS dedupe_key     bytea;

-- The backfill below rewrites every row kept so far:
-- scans: dead_letters

-- Rows kept before this migration: describe their payload (which stays as it
-- was, untruncated: a migration does not throw away what an operator may
-- still want) and give those that were deduplicated by source and id the key
-- a redelivery would compute now, so it is still kept once. Rows without a
-- source or an id were never deduplicated and keep a NULL key.
UPDATE dead_letters SET
    payload_size   = octet_length(coalesce(payload, '')),
    payload_sha256 = sha256(coalesce(payload, '')),
    dedupe_key     = CASE WHEN event_source IS NOT NULL AND event_id IS NOT NULL THEN sha256(
        int8send(octet_length(convert_to(event_source, 'UTF8'))) || convert_to(event_source, 'UTF8') ||
        int8send(octet_length(convert_to(event_id, 'UTF8'))) || convert_to(event_id, 'UTF8') ||
        sha256(coalesce(payload, ''))) END
WHERE payload_sha256 IS NULL;

ALTER TABLE dead_letters DROP CONSTRAINT IF EXISTS dead_letters_event_source_event_id_key;
CREATE UNIQUE INDEX IF NOT EXISTS dead_letters_dedupe_key_key ON dead_letters (dedupe_key);

---- create above / drop below ----

DROP INDEX IF EXISTS dead_letters_dedupe_key_key;
ALTER TABLE dead_letters
    DROP COLUMN IF EXISTS dedupe_key,
    DROP COLUMN IF EXISTS payload_sha256,
    DROP COLUMN IF EXISTS payload_size;
