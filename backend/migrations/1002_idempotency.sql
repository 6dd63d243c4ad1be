-- Idempotency-Key on POST /api/purchase/: a key is claimed in the transaction that writes
-- the order and its PlaceOrder message, so a key stands for exactly one order, and a retry
-- answers what the first request got. Portable SQL: SQLite and PostgreSQL.
CREATE TABLE IF NOT EXISTS idempotency_keys (
    -- As the client sent it: 1 to 255 visible ASCII characters. The primary key is what
    -- makes two concurrent requests with one key end with one order.
    idempotency_key TEXT PRIMARY KEY,
    -- The canonical form of the parsed request (JSON, fixed field order, flags defaulted):
    -- a repeat must match it exactly, or it is answered 409.
    fingerprint     TEXT NOT NULL,
    order_id        TEXT NOT NULL,
    -- The answer the first request got, replayed byte for byte.
    response_status BIGINT NOT NULL,
    response_body   TEXT NOT NULL,
    created_at_ms   BIGINT NOT NULL
);
-- For a retention sweep (delete keys older than a horizon), which does not exist yet.
CREATE INDEX IF NOT EXISTS idempotency_keys_by_age ON idempotency_keys (created_at_ms);
