-- The sales figures by product, by customer and by minute. Like `sales`, each is a sum over
-- `analytics_orders` (one row per finished order, counted once), kept up to date by the
-- event consumer and rebuilt from the orders read model by `marketplace analytics rebuild`
-- (and at start when orders finished that were never counted).
-- Portable SQL: SQLite and PostgreSQL.

-- What each counted order contributes. Rows counted before these columns existed hold the
-- defaults until the next rebuild.
ALTER TABLE analytics_orders ADD COLUMN username TEXT NOT NULL DEFAULT '';
ALTER TABLE analytics_orders ADD COLUMN product TEXT NOT NULL DEFAULT 'late_token';
ALTER TABLE analytics_orders ADD COLUMN tokens BIGINT NOT NULL DEFAULT 0;
ALTER TABLE analytics_orders ADD COLUMN revenue BIGINT NOT NULL DEFAULT 0;
-- When the order finished (its final update's time): what the per-minute figures use, so
-- that a rebuild puts it in the same minute.
ALTER TABLE analytics_orders ADD COLUMN final_at_ms BIGINT NOT NULL DEFAULT 0;

-- Successful orders per product.
CREATE TABLE IF NOT EXISTS sales_by_product (
    product TEXT PRIMARY KEY,
    orders  BIGINT NOT NULL,
    tokens  BIGINT NOT NULL,
    revenue BIGINT NOT NULL
);

-- Successful orders per buyer; `spent` orders the top customers.
CREATE TABLE IF NOT EXISTS sales_by_customer (
    username TEXT PRIMARY KEY,
    orders   BIGINT NOT NULL,
    tokens   BIGINT NOT NULL,
    spent    BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS sales_by_customer_spent ON sales_by_customer (spent DESC, username);

-- Finished orders per minute (the minute's first millisecond) and final status.
CREATE TABLE IF NOT EXISTS sales_by_minute (
    minute_ms BIGINT NOT NULL,
    status    TEXT NOT NULL,
    orders    BIGINT NOT NULL,
    tokens    BIGINT NOT NULL,
    revenue   BIGINT NOT NULL,
    PRIMARY KEY (minute_ms, status)
);
