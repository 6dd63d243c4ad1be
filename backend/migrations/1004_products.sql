-- What each order bought (orders placed before products existed bought late_token).
ALTER TABLE orders ADD COLUMN product TEXT NOT NULL DEFAULT 'late_token';
