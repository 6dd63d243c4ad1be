-- Everything that reached the dead-letter exchange: nothing is dropped.
CREATE TABLE IF NOT EXISTS dead_letters (
    id              TEXT PRIMARY KEY,
    message_id      TEXT NOT NULL,
    original_queue  TEXT,
    exchange        TEXT,
    routing_key     TEXT,
    reason          TEXT,
    delivery_count  BIGINT NOT NULL,
    times_seen      BIGINT NOT NULL,
    order_id        TEXT,
    headers         TEXT NOT NULL,      -- the AMQP headers, as JSON
    payload         TEXT NOT NULL,      -- the body (lossy UTF-8 when it was not text)
    first_seen_ms   BIGINT NOT NULL,
    last_seen_ms    BIGINT NOT NULL,
    resolved_at_ms  BIGINT
);
CREATE UNIQUE INDEX IF NOT EXISTS dead_letters_message ON dead_letters (message_id);
