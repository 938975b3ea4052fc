-- 64-bit message ids. The tutorial's SERIAL is a 32-bit integer:
-- at 2^31 every insert fails. Widening the column rewrites the table and its
-- indexes under an ACCESS EXCLUSIVE lock, which blocks reads and writes of
-- messages for as long as the rewrite takes: 4.3-4.8 s for 1,000,000 rows
-- (201 MB with indexes) on a 2-core machine shared with other work. Run it
-- ahead of a deploy with `go run ./cmd/pscmessages migrate` (MIGRATIONS.md);
-- a cold-starting function applies it only to a small
-- table (store.InlineMigrationBytes, MIGRATIONS.md):
-- scans: messages
--
-- The lock_timeout keeps the ALTER from queueing behind a long transaction:
-- while it waited, every later query on messages would queue behind it. If it
-- times out, nothing changed; run the migration again.
SET LOCAL lock_timeout = '10s';
ALTER TABLE messages ALTER COLUMN id TYPE bigint;
-- The sequence's maximum follows its type: a sequence at int4's maximum
-- becomes one at int8's.
ALTER SEQUENCE messages_id_seq AS bigint;

---- create above / drop below ----

SET LOCAL lock_timeout = '10s';
ALTER SEQUENCE messages_id_seq AS integer;
ALTER TABLE messages ALTER COLUMN id TYPE integer;
