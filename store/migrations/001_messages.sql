-- The tutorial's table, unchanged: a database the Flask app already filled
-- keeps every row, and this statement does nothing there.
CREATE TABLE IF NOT EXISTS messages (
    id      SERIAL PRIMARY KEY,
    content TEXT
);

---- create above / drop below ----

DROP TABLE messages;
