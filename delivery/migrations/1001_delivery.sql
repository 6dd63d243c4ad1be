-- One row per order that reached delivery.
-- status: SCHEDULED, CANCELLED (after scheduling, or as a tombstone when the cancel came first).
CREATE TABLE IF NOT EXISTS deliveries (
    order_id      TEXT PRIMARY KEY,
    username      TEXT NOT NULL,
    amount        BIGINT NOT NULL,
    status        TEXT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);
