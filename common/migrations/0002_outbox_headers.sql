-- Message headers to publish with an outbox row: the W3C trace context (traceparent,
-- tracestate) of the work that wrote it, as a JSON object, so the relay's publish and the
-- consumer join the same trace. Null for rows without a trace (tracing off, older rows).
ALTER TABLE outbox ADD COLUMN headers TEXT;
