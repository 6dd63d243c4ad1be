-- Shared by every service (common's migrations take versions below 1000).

-- Messages written in the same transaction as the state change that produced them, and
-- published by the relay afterwards: a commit without its messages cannot happen.
CREATE TABLE IF NOT EXISTS outbox (
    id             TEXT PRIMARY KEY,      -- the AMQP message id (UUIDv7: sorts by creation)
    exchange       TEXT NOT NULL,
    routing_key    TEXT NOT NULL,
    correlation_id TEXT,
    payload        TEXT NOT NULL,
    created_at_ms  BIGINT NOT NULL
);

-- Ids of consumed messages, recorded in the transaction that handled them, so that a
-- redelivered message is recognised and only acknowledged again.
CREATE TABLE IF NOT EXISTS inbox (
    message_id     TEXT PRIMARY KEY,
    received_at_ms BIGINT NOT NULL
);
