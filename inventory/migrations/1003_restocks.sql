-- Operators' restocks, one row per restock id (a redelivered restock finds its row and
-- adds nothing). The audit checks opening + Σ restocks = stock + Σ reserved − Σ released.
CREATE TABLE IF NOT EXISTS restocks (
    restock_id TEXT PRIMARY KEY,
    product    TEXT NOT NULL,
    amount     BIGINT NOT NULL CHECK (amount > 0),
    at_ms      BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS restocks_by_product ON restocks (product);
