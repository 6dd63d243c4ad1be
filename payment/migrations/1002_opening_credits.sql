-- What each account opened with, so the audit can check
-- opening = balance + Σ charged − Σ refunded without trusting today's INITIAL_CREDITS.
-- NULL for accounts opened before this column existed (the audit then uses INITIAL_CREDITS).
ALTER TABLE accounts ADD COLUMN opening_credits BIGINT;
