//! A consumed message, as handlers see it: its id, payload, headers and trace context.

use lapin::{BasicProperties, types::AMQPValue};

use super::HandlerError;
use crate::telemetry;

/// A consumed message, as handlers see it.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub message_id: String,
    pub routing_key: String,
    pub exchange: String,
    pub correlation_id: Option<String>,
    pub body: Vec<u8>,
    pub redelivered: bool,
    pub properties: BasicProperties,
    /// The context of the message's consumer span: work done for it, and messages it
    /// causes, belong to its trace. Set by the consume loops.
    pub cx: telemetry::Context,
}

impl Incoming {
    /// The message of a delivery, and what acknowledges it.
    pub(super) fn from_delivery(delivery: lapin::message::Delivery) -> (Incoming, lapin::Acker) {
        let msg = Incoming {
            message_id: delivery
                .properties
                .message_id()
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
            routing_key: delivery.routing_key.to_string(),
            exchange: delivery.exchange.to_string(),
            correlation_id: delivery
                .properties
                .correlation_id()
                .as_ref()
                .map(ToString::to_string),
            body: delivery.data,
            redelivered: delivery.redelivered,
            properties: delivery.properties,
            cx: telemetry::Context::new(),
        };
        (msg, delivery.acker)
    }

    /// Deliveries so far, as counted by the quorum queue (0 on the first).
    pub fn delivery_count(&self) -> i64 {
        header_i64(&self.properties, "x-delivery-count").unwrap_or(0)
    }

    pub fn decode<T: serde::de::DeserializeOwned>(&self) -> Result<T, HandlerError> {
        serde_json::from_slice(&self.body)
            .map_err(|e| HandlerError::Permanent(anyhow::anyhow!("undecodable message: {e}")))
    }
}

pub fn header_i64(props: &BasicProperties, name: &str) -> Option<i64> {
    let headers = props.headers().as_ref()?;
    match headers.inner().get(name)? {
        AMQPValue::LongLongInt(v) => Some(*v),
        AMQPValue::LongInt(v) => Some(i64::from(*v)),
        AMQPValue::LongUInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortUInt(v) => Some(i64::from(*v)),
        _ => None,
    }
}
