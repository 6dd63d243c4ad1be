-- The order feed behind GET /api/orders/stream: one row per OrderUpdated the projection
-- applied, written in the same transaction as the read model, holding what changed (the
-- status and the timeline entries the read model did not have yet). Every backend replica
-- tails this table, so a client sees the same feed whichever replica it is connected to.
-- Portable SQL: SQLite and PostgreSQL.
CREATE TABLE IF NOT EXISTS order_feed (
    -- Assigned by the writer as MAX(seq) + 1 while it holds the table's write lock (SQLite's
    -- one writer; on PostgreSQL `LOCK TABLE order_feed IN EXCLUSIVE MODE`), not by a
    -- sequence: so seqs are gapless and committed in their order, which is what lets a
    -- reader that has seen seq N know that it has seen everything below N. (A sequence can
    -- commit out of order, and a rolled-back transaction leaves a hole in it.)
    seq       BIGINT PRIMARY KEY,
    order_id  TEXT NOT NULL,
    username  TEXT NOT NULL,
    at_ms     BIGINT NOT NULL,    -- when the row was written (retention)
    payload   TEXT NOT NULL       -- the event's JSON, sent as is
);

-- The seq of the newest timeline entry the row holds, so that the projection knows which
-- entries an update adds without reading the timeline back. NULL for rows written before
-- it existed and for rows a POST wrote (whose timeline is empty): then the timeline is read.
ALTER TABLE orders ADD COLUMN timeline_seq BIGINT;
