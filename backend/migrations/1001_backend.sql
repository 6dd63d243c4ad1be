-- The backend's read models and sales figures. Everything here is derived from events
-- (except the order row a POST writes before its saga starts), so it can be rebuilt.
-- Portable SQL: SQLite and PostgreSQL.

-- One row per order: written as PROCESSING by the POST, then replaced by every newer
-- OrderUpdated event (`version` decides; events may arrive late or twice).
CREATE TABLE IF NOT EXISTS orders (
    order_id      TEXT PRIMARY KEY,   -- UUIDv7: sorting by id sorts by creation time
    username      TEXT NOT NULL,
    price         BIGINT NOT NULL,
    amount        BIGINT NOT NULL,
    status        TEXT NOT NULL,
    phase         TEXT NOT NULL,
    listed        BIGINT NOT NULL,    -- 1 once order.create succeeded (/api/all-transaction)
    version       BIGINT NOT NULL,
    placed_at_ms  BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL,
    timeline      TEXT NOT NULL       -- JSON array of common::messages::TimelineEntry
);
-- The id in each index serves the ORDER BY and the cursor of /api/orders.
CREATE INDEX IF NOT EXISTS orders_by_username ON orders (username, order_id);
CREATE INDEX IF NOT EXISTS orders_by_status ON orders (status, order_id);
CREATE INDEX IF NOT EXISTS orders_listed ON orders (order_id) WHERE listed = 1;

-- Balances as payment last reported them.
CREATE TABLE IF NOT EXISTS users (
    username TEXT PRIMARY KEY,
    credits  BIGINT NOT NULL,
    version  BIGINT NOT NULL
);

-- Stock as inventory last reported it.
CREATE TABLE IF NOT EXISTS products (
    product TEXT PRIMARY KEY,
    stock   BIGINT NOT NULL,
    version BIGINT NOT NULL
);

-- Orders already counted in the sales figures: an order counts once, at its first final
-- update, whatever the number of deliveries of that update.
CREATE TABLE IF NOT EXISTS analytics_orders (
    order_id       TEXT PRIMARY KEY,
    status         TEXT NOT NULL,
    counted_at_ms  BIGINT NOT NULL
);

-- Sales figures per final status; tokens and revenue are only non-zero for SUCCESS.
CREATE TABLE IF NOT EXISTS sales (
    status  TEXT PRIMARY KEY,
    orders  BIGINT NOT NULL,
    tokens  BIGINT NOT NULL,
    revenue BIGINT NOT NULL
);
