-- What the product was stocked with, so the audit can check
-- opening = stock + Σ reserved − Σ released without trusting today's INITIAL_STOCK.
-- NULL for products stocked before this column existed (the audit then uses INITIAL_STOCK).
ALTER TABLE products ADD COLUMN opening_stock BIGINT;
