//! The dead-letter service: stores every message that reached the dead-letter exchange
//! (rejected, over its delivery limit, expired) and tells the manager when it belonged to a
//! saga, so the saga fails (or, for a compensation, retries) instead of waiting forever.

use std::sync::Arc;

use common::{
    bus::{self, Broker, Handler, HandlerError, Incoming},
    config::Config,
    db::Db,
    domain::OrderId,
    inbox,
    messages::{DeadLettered, ManagerMessage, Step, StepCommand},
    outbox, service,
    shutdown::Shutdown,
    time::now_ms,
    topology,
};
use lapin::types::AMQPValue;
use sqlx::Row;

pub static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

pub async fn start(config: Config, shutdown: Shutdown) -> anyhow::Result<service::Running> {
    let db = Db::open(&config, "dead-letter", &MIGRATIONS, &shutdown).await?;
    let broker = Broker::start(&config.amqp_url, "dead-letter", shutdown.clone());
    let store = Arc::new(DeadLetterStore { db: db.clone() });
    let parts: Vec<service::Part> = vec![Box::pin(bus::consume(
        broker.clone(),
        topology::DEAD_LETTER_QUEUE,
        32,
        store,
        shutdown.clone(),
    ))];
    Ok(service::spawn("dead-letter", db, broker, parts))
}

pub struct DeadLetterStore {
    pub db: Db,
}

impl Handler for DeadLetterStore {
    async fn handle(&self, msg: &Incoming) -> Result<(), HandlerError> {
        let letter = Letter::read(msg);
        let now = now_ms();
        let mut tx = self.db.begin().await?;
        // The same message dead-lettered again (e.g. replayed and failing anew) is one
        // record seen more than once.
        let seen_before = sqlx::query(
            "UPDATE dead_letters SET times_seen = times_seen + 1, last_seen_ms = $2, reason = $3, \
             delivery_count = $4, resolved_at_ms = NULL WHERE message_id = $1 RETURNING id",
        )
        .bind(&letter.message_id)
        .bind(now)
        .bind(&letter.reason)
        .bind(letter.delivery_count)
        .fetch_optional(&mut *tx)
        .await?;
        let id = match seen_before {
            Some(row) => row.try_get::<String, _>("id")?,
            None => {
                let id = uuid::Uuid::now_v7().to_string();
                sqlx::query(
                    "INSERT INTO dead_letters (id, message_id, original_queue, exchange, routing_key, reason, \
                     delivery_count, times_seen, order_id, headers, payload, first_seen_ms, last_seen_ms) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, 1, $8, $9, $10, $11, $11)",
                )
                .bind(&id)
                .bind(&letter.message_id)
                .bind(&letter.queue)
                .bind(&letter.exchange)
                .bind(&letter.routing_key)
                .bind(&letter.reason)
                .bind(letter.delivery_count)
                .bind(letter.order_id.map(|o| o.to_string()))
                .bind(&letter.headers)
                .bind(String::from_utf8_lossy(&msg.body).into_owned())
                .bind(now)
                .execute(&mut *tx)
                .await?;
                id
            }
        };
        // The dead letter's own id in our inbox is not needed: the upsert above is idempotent.
        let _ = inbox::first_delivery(&mut tx, &format!("dl:{}", msg.message_id)).await?;
        tracing::warn!(dead_letter = %id, queue = ?letter.queue, reason = %letter.reason, order_id = ?letter.order_id, "stored a dead letter");
        // Never about a notice to the manager itself: that would loop.
        if let Some(order_id) = letter.order_id
            && letter.routing_key.as_deref() != Some(topology::RK_DEAD_LETTERED)
        {
            let notice = ManagerMessage::DeadLettered(DeadLettered {
                order_id,
                step: letter.step,
                dead_letter_id: id,
                reason: letter.reason.clone(),
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
        tx.commit().await?;
        self.db.wake_outbox();
        Ok(())
    }
}

/// What can be read off a dead-lettered message, however broken its body.
struct Letter {
    message_id: String,
    queue: Option<String>,
    exchange: Option<String>,
    routing_key: Option<String>,
    reason: String,
    delivery_count: i64,
    order_id: Option<OrderId>,
    step: Option<Step>,
    headers: String,
}

impl Letter {
    fn read(msg: &Incoming) -> Letter {
        let headers = msg.properties.headers().clone().unwrap_or_default();
        let text = |name: &str| match headers.inner().get(name) {
            Some(AMQPValue::LongString(s)) => Some(s.to_string()),
            Some(AMQPValue::ShortString(s)) => Some(s.to_string()),
            _ => None,
        };
        let (order_id, step) = saga_of(msg);
        Letter {
            // A message without an id still gets stored, under one we make up.
            message_id: if msg.message_id.is_empty() {
                format!("no-id:{}", uuid::Uuid::now_v7())
            } else {
                msg.message_id.clone()
            },
            queue: text("x-first-death-queue"),
            exchange: text("x-first-death-exchange"),
            routing_key: msg
                .properties
                .kind()
                .as_ref()
                .map(|k| k.to_string())
                .or_else(|| Some(msg.routing_key.clone())),
            reason: text("x-first-death-reason").unwrap_or_else(|| "unknown".into()),
            delivery_count: bus::header_i64(&msg.properties, "x-delivery-count").unwrap_or(0),
            order_id,
            step,
            headers: serde_json::to_string(&headers).unwrap_or_else(|_| "{}".into()),
        }
    }
}

/// The saga (and step) a dead letter belongs to: from the body when it decodes, else from
/// the correlation id.
fn saga_of(msg: &Incoming) -> (Option<OrderId>, Option<Step>) {
    if let Ok(cmd) = serde_json::from_slice::<StepCommand>(&msg.body) {
        return (Some(cmd.order_id), Some(cmd.step));
    }
    if let Ok(ManagerMessage::StepReply(r)) = serde_json::from_slice::<ManagerMessage>(&msg.body) {
        return (Some(r.order_id), Some(r.step));
    }
    let order_id = msg
        .correlation_id
        .as_deref()
        .and_then(|c| OrderId::parse(c).ok());
    (order_id, None)
}
