-- Pub/Sub messages that can never be stored: acknowledged so they are not
-- retried forever, and kept here with the reason for an operator to inspect.
CREATE TABLE IF NOT EXISTS dead_letters (
    id           bigserial PRIMARY KEY,
    received_at  timestamptz NOT NULL DEFAULT now(),
    event_id     text,
    event_source text,
    event_type   text,
    reason       text NOT NULL,
    payload      bytea,
    UNIQUE (event_source, event_id)
);

---- create above / drop below ----

DROP TABLE dead_letters;
