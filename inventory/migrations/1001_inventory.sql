CREATE TABLE IF NOT EXISTS products (
    product TEXT PRIMARY KEY,
    stock   BIGINT NOT NULL CHECK (stock >= 0),
    version BIGINT NOT NULL             -- orders StockChanged events for the read models
);

-- One row per order that reached inventory.
-- status: RESERVED, REFUSED, RELEASED, or CANCELLED (tombstone: the release came first).
CREATE TABLE IF NOT EXISTS reservations (
    order_id      TEXT PRIMARY KEY,
    product       TEXT NOT NULL,
    amount        BIGINT NOT NULL,
    status        TEXT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);
