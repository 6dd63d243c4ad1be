-- Users' credits. The CHECK is the last line of defence: the debit is already conditional.
CREATE TABLE IF NOT EXISTS accounts (
    username TEXT PRIMARY KEY,
    credits  BIGINT NOT NULL CHECK (credits >= 0),
    version  BIGINT NOT NULL            -- orders CreditsChanged events for the read models
);

-- One row per order that reached payment: its charge and what became of it.
-- status: CHARGED, DECLINED, REFUNDED, or CANCELLED (tombstone: the refund came first).
CREATE TABLE IF NOT EXISTS payments (
    order_id      TEXT PRIMARY KEY,
    username      TEXT NOT NULL,
    amount        BIGINT NOT NULL,
    status        TEXT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);
