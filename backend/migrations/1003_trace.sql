-- The order's trace id (32 hex digits), set when the POST creates the trace, so that
-- GET /api/orders/{id} leads to the order's trace. Null when tracing is off.
ALTER TABLE orders ADD COLUMN trace_id TEXT;
