-- What a replay needs and what it leaves behind.
-- correlation_id: the original message's, re-published with it (rows stored before this
--   migration fall back to their order id, which is what every saga message carries).
-- replays / replayed_at_ms: how often an operator re-published the letter, and when last.
ALTER TABLE dead_letters ADD COLUMN correlation_id TEXT;
ALTER TABLE dead_letters ADD COLUMN replays BIGINT NOT NULL DEFAULT 0;
ALTER TABLE dead_letters ADD COLUMN replayed_at_ms BIGINT;
CREATE INDEX IF NOT EXISTS dead_letters_order ON dead_letters (order_id);
CREATE INDEX IF NOT EXISTS dead_letters_queue ON dead_letters (original_queue);
