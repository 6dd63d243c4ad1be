-- The orders as the order service records them. status: PROCESSING, then SUCCESS or the
-- final status the manager rejected it with. A row created by order.reject alone is a
-- tombstone: its order.create failed or never arrived, and a late create does nothing.
CREATE TABLE IF NOT EXISTS orders (
    order_id      TEXT PRIMARY KEY,
    username      TEXT NOT NULL,
    price         BIGINT NOT NULL,
    amount        BIGINT NOT NULL,
    status        TEXT NOT NULL,
    created       BIGINT NOT NULL,      -- 1 when order.create ran, 0 for a tombstone
    updated_at_ms BIGINT NOT NULL
);
