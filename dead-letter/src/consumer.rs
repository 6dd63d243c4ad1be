//! The consumer of the dead-letter queue: stores each letter and, when it belongs to a
//! saga, tells the manager in the same transaction.

use common::{
    bus::{self, Handler, HandlerError, Incoming},
    db::Db,
    domain::OrderId,
    messages::{DeadLettered, ManagerMessage, PlaceOrder, Step, StepCommand},
    outbox,
    time::now_ms,
    topology,
};
use lapin::types::{AMQPValue, FieldTable};

use crate::store::{self, NewLetter};

pub struct DeadLetterConsumer {
    pub db: Db,
    /// Counts the dead letters stored, by the queue they died in.
    pub metrics: std::sync::Arc<common::metrics::Metrics>,
}

impl Handler for DeadLetterConsumer {
    async fn handle(&self, msg: &Incoming) -> Result<(), HandlerError> {
        let saga = saga_of(msg);
        let letter = read(msg, saga.order_id);
        let mut tx = self.db.begin().await?;
        let id = store::record(&mut tx, &letter, now_ms())
            .await
            .map_err(copy_stored_meanwhile)?;
        tracing::warn!(dead_letter = %id, queue = ?letter.queue, reason = %letter.reason, order_id = ?letter.order_id, "stored a dead letter");
        // Never about a notice to the manager itself: that would loop.
        if let Some(order_id) = saga.order_id
            && letter.routing_key.as_deref() != Some(topology::RK_DEAD_LETTERED)
        {
            let notice = ManagerMessage::DeadLettered(DeadLettered {
                order_id,
                step: saga.step,
                dead_letter_id: id,
                reason: letter.reason.clone(),
                place_order: saga.place_order,
            });
            outbox::enqueue(
                &mut tx,
                topology::EXCHANGE,
                topology::RK_DEAD_LETTERED,
                Some(order_id.to_string()),
                &notice,
            )
            .await?;
        }
        self.db.commit_and_wake(tx).await?;
        let queue = letter.queue.as_deref().unwrap_or("unknown");
        self.metrics.dead_letters.with_label_values(&[queue]).inc();
        Ok(())
    }
}

/// Two copies of one letter stored at once (on PostgreSQL, where letters are stored
/// concurrently): the second's insert breaks the unique message id, and a retry finds the
/// first's row and counts it. Any other error is what it is.
fn copy_stored_meanwhile(e: sqlx::Error) -> HandlerError {
    match e.as_database_error() {
        Some(db) if db.is_unique_violation() => HandlerError::Transient(e.into()),
        _ => e.into(),
    }
}

/// What can be read off a dead-lettered message, however broken its body.
fn read(msg: &Incoming, order_id: Option<OrderId>) -> NewLetter {
    let headers = msg.properties.headers().clone().unwrap_or_default();
    let text = |name: &str| match headers.inner().get(name) {
        Some(AMQPValue::LongString(s)) => Some(s.to_string()),
        Some(AMQPValue::ShortString(s)) => Some(s.to_string()),
        _ => None,
    };
    // The broker keeps the original routing key when it dead-letters (our DLX sets no
    // other); the `type` property, where our publisher also puts it, is only a fallback.
    let routing_key = Some(msg.routing_key.clone())
        .filter(|k| !k.is_empty())
        .or_else(|| msg.properties.kind().as_ref().map(ToString::to_string));
    NewLetter {
        // A message without an id still gets stored, under one we make up.
        message_id: if msg.message_id.is_empty() {
            format!("no-id:{}", uuid::Uuid::now_v7())
        } else {
            msg.message_id.clone()
        },
        queue: text("x-first-death-queue"),
        exchange: text("x-first-death-exchange"),
        routing_key,
        correlation_id: msg.correlation_id.clone(),
        reason: text("x-first-death-reason").unwrap_or_else(|| "unknown".into()),
        delivery_count: bus::header_i64(&msg.properties, "x-delivery-count").unwrap_or(0),
        order_id: order_id.map(|o| o.to_string()),
        headers: table_json(&headers).to_string(),
        payload: String::from_utf8_lossy(&msg.body).into_owned(),
    }
}

/// AMQP headers as plain JSON (strings as text, timestamps as seconds), so that an operator
/// reads `x-death` as the broker wrote it rather than lapin's tagged byte arrays.
fn table_json(table: &FieldTable) -> serde_json::Value {
    serde_json::Value::Object(
        table
            .inner()
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), value_json(v)))
            .collect(),
    )
}

fn value_json(value: &AMQPValue) -> serde_json::Value {
    use serde_json::{Value, json};
    let text = |bytes: &[u8]| Value::String(String::from_utf8_lossy(bytes).into_owned());
    match value {
        AMQPValue::Boolean(b) => json!(b),
        AMQPValue::ShortShortInt(n) => json!(n),
        AMQPValue::ShortShortUInt(n) => json!(n),
        AMQPValue::ShortInt(n) => json!(n),
        AMQPValue::ShortUInt(n) => json!(n),
        AMQPValue::LongInt(n) => json!(n),
        AMQPValue::LongUInt(n) => json!(n),
        AMQPValue::LongLongInt(n) => json!(n),
        AMQPValue::Float(n) => json!(n),
        AMQPValue::Double(n) => json!(n),
        AMQPValue::DecimalValue(d) => json!({"scale": d.scale, "value": d.value}),
        AMQPValue::ShortString(s) => json!(s.as_str()),
        AMQPValue::LongString(s) => text(s.as_bytes()),
        AMQPValue::FieldArray(a) => Value::Array(a.as_slice().iter().map(value_json).collect()),
        AMQPValue::Timestamp(t) => json!(t),
        AMQPValue::FieldTable(t) => table_json(t),
        AMQPValue::ByteArray(b) => text(b.as_slice()),
        AMQPValue::Void => Value::Null,
    }
}

/// The saga a dead letter belongs to, as far as it can be read.
#[derive(Debug, Default, PartialEq)]
struct SagaOf {
    order_id: Option<OrderId>,
    step: Option<Step>,
    /// The letter is the saga's own `PlaceOrder`.
    place_order: Option<PlaceOrder>,
}

/// From the body when it decodes, else from the correlation id.
fn saga_of(msg: &Incoming) -> SagaOf {
    if let Ok(cmd) = serde_json::from_slice::<StepCommand>(&msg.body) {
        return SagaOf {
            order_id: Some(cmd.order_id),
            step: Some(cmd.step),
            place_order: None,
        };
    }
    match serde_json::from_slice::<ManagerMessage>(&msg.body) {
        Ok(ManagerMessage::StepReply(r)) => {
            return SagaOf {
                order_id: Some(r.order_id),
                step: Some(r.step),
                place_order: None,
            };
        }
        Ok(ManagerMessage::PlaceOrder(p)) => {
            return SagaOf {
                order_id: Some(p.order_id),
                step: None,
                place_order: Some(p),
            };
        }
        _ => {}
    }
    SagaOf {
        order_id: msg
            .correlation_id
            .as_deref()
            .and_then(|c| OrderId::parse(c).ok()),
        ..SagaOf::default()
    }
}

#[cfg(test)]
mod tests;
