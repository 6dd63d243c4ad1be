//! A message to publish, as the outbox holds it: written by a transaction (the outbox),
//! handed to the relay (the database's handoff), published by the bus.

use std::collections::BTreeMap;

/// A message waiting in the outbox.
#[derive(Debug, Clone)]
pub struct Pending {
    pub id: String,
    pub exchange: String,
    pub routing_key: String,
    pub correlation_id: Option<String>,
    pub payload: String,
    /// AMQP headers to publish with it: the W3C trace context (`traceparent`,
    /// `tracestate`) of the work that wrote it, captured at enqueue time because the relay
    /// publishes later, outside that work. None: no trace.
    pub headers: Option<BTreeMap<String, String>>,
}
