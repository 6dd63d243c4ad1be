//! The dead-letter store: the only SQL of the service.

use common::{
    db::{Db, Tx},
    outbox::{self, Pending},
    time::now_ms,
};
use sqlx::{Row, any::AnyRow};

/// A dead letter as stored: where it came from, why it died, how often, and what the
/// operator did about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// UUIDv7: sorts by when the letter was first seen.
    pub id: String,
    /// The dead message's own id (its consumer's inbox key), kept on replay.
    pub message_id: String,
    pub original_queue: Option<String>,
    pub exchange: Option<String>,
    pub routing_key: Option<String>,
    pub correlation_id: Option<String>,
    pub reason: Option<String>,
    pub delivery_count: i64,
    pub times_seen: i64,
    pub order_id: Option<String>,
    /// The AMQP headers, as JSON text.
    pub headers: String,
    /// The body (lossy UTF-8 when it was not text).
    pub payload: String,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    pub resolved_at_ms: Option<i64>,
    pub replays: i64,
    pub replayed_at_ms: Option<i64>,
}

/// What the consumer read off a dead-lettered message.
#[derive(Debug, Clone)]
pub struct NewLetter {
    pub message_id: String,
    pub queue: Option<String>,
    pub exchange: Option<String>,
    pub routing_key: Option<String>,
    pub correlation_id: Option<String>,
    pub reason: String,
    pub delivery_count: i64,
    pub order_id: Option<String>,
    pub headers: String,
    pub payload: String,
}

/// Which letters a listing wants: newest first, strictly older than `before`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub queue: Option<String>,
    pub order_id: Option<String>,
    pub reason: Option<String>,
    /// None: open and resolved alike.
    pub resolved: Option<bool>,
    pub before: Option<String>,
    pub limit: i64,
}

const COLUMNS: &str = "id, message_id, original_queue, exchange, routing_key, correlation_id, reason, \
    delivery_count, times_seen, order_id, headers, payload, first_seen_ms, last_seen_ms, \
    resolved_at_ms, replays, replayed_at_ms";

/// Stores a letter inside `tx` and returns its id. The same message dead-lettered again
/// (e.g. replayed and failing anew) is one record seen once more, and open again.
pub async fn record(tx: &mut Tx, letter: &NewLetter, now: i64) -> Result<String, sqlx::Error> {
    let seen_before = sqlx::query(
        "UPDATE dead_letters SET times_seen = times_seen + 1, last_seen_ms = $2, reason = $3, \
         delivery_count = $4, resolved_at_ms = NULL WHERE message_id = $1 RETURNING id",
    )
    .bind(&letter.message_id)
    .bind(now)
    .bind(&letter.reason)
    .bind(letter.delivery_count)
    .fetch_optional(&mut **tx)
    .await?;
    if let Some(row) = seen_before {
        return row.try_get("id");
    }
    let id = uuid::Uuid::now_v7().to_string();
    sqlx::query(
        "INSERT INTO dead_letters (id, message_id, original_queue, exchange, routing_key, correlation_id, \
         reason, delivery_count, times_seen, order_id, headers, payload, first_seen_ms, last_seen_ms) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 1, $9, $10, $11, $12, $12)",
    )
    .bind(&id)
    .bind(&letter.message_id)
    .bind(&letter.queue)
    .bind(&letter.exchange)
    .bind(&letter.routing_key)
    .bind(&letter.correlation_id)
    .bind(&letter.reason)
    .bind(letter.delivery_count)
    .bind(&letter.order_id)
    .bind(&letter.headers)
    .bind(&letter.payload)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(id)
}

pub async fn get(db: &Db, id: &str) -> Result<Option<DeadLetter>, sqlx::Error> {
    let sql = format!("SELECT {COLUMNS} FROM dead_letters WHERE id = $1");
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(db.pool())
        .await?
        .as_ref()
        .map(letter)
        .transpose()
}

/// Letters matching `filter`, newest first, at most `filter.limit`.
pub async fn list(db: &Db, filter: &Filter) -> Result<Vec<DeadLetter>, sqlx::Error> {
    // Only the conditions in use are written, so each query can use its index.
    let mut sql = format!("SELECT {COLUMNS} FROM dead_letters WHERE 1 = 1");
    let mut params: Vec<String> = Vec::new();
    let mut condition = |column: &str, op: &str, value: &str| {
        params.push(value.to_string());
        sql.push_str(&format!(" AND {column} {op} ${}", params.len()));
    };
    if let Some(queue) = &filter.queue {
        condition("original_queue", "=", queue);
    }
    if let Some(order_id) = &filter.order_id {
        condition("order_id", "=", order_id);
    }
    if let Some(reason) = &filter.reason {
        condition("reason", "=", reason);
    }
    if let Some(before) = &filter.before {
        condition("id", "<", before);
    }
    match filter.resolved {
        Some(true) => sql.push_str(" AND resolved_at_ms IS NOT NULL"),
        Some(false) => sql.push_str(" AND resolved_at_ms IS NULL"),
        None => {}
    }
    sql.push_str(&format!(" ORDER BY id DESC LIMIT ${}", params.len() + 1));
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
    for p in params {
        query = query.bind(p);
    }
    let rows = query.bind(filter.limit).fetch_all(db.pool()).await?;
    rows.iter().map(letter).collect()
}

/// Marks the letter resolved (keeping the first resolution time); None for an unknown id.
pub async fn resolve(db: &Db, id: &str) -> Result<Option<DeadLetter>, sqlx::Error> {
    sqlx::query(
        "UPDATE dead_letters SET resolved_at_ms = COALESCE(resolved_at_ms, $2) WHERE id = $1",
    )
    .bind(id)
    .bind(now_ms())
    .execute(db.pool())
    .await?;
    get(db, id).await
}

/// Why a letter was not replayed.
#[derive(Debug)]
pub enum ReplayRefused {
    NotFound,
    Resolved,
    /// Nothing says where it was going.
    NoDestination,
    Db(sqlx::Error),
}

impl From<sqlx::Error> for ReplayRefused {
    fn from(e: sqlx::Error) -> Self {
        ReplayRefused::Db(e)
    }
}

/// Where a replay goes: the original exchange and routing key; a message that reached its
/// queue through the default exchange goes back to that queue.
pub fn destination(letter: &DeadLetter) -> Option<(String, String)> {
    match letter.exchange.as_deref() {
        None | Some("") => letter
            .original_queue
            .clone()
            .map(|queue| (String::new(), queue)),
        Some(exchange) => letter
            .routing_key
            .clone()
            .map(|key| (exchange.to_string(), key)),
    }
}

/// Re-publishes the letter's body with its original message id and correlation id, through
/// the outbox, in the transaction that counts the replay. The caller wakes the relay.
pub async fn replay(db: &Db, id: &str) -> Result<DeadLetter, ReplayRefused> {
    let mut tx = db.begin().await?;
    let sql = format!("SELECT {COLUMNS} FROM dead_letters WHERE id = $1");
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
    let found = row.as_ref().map(letter).transpose()?;
    let current = found.ok_or(ReplayRefused::NotFound)?;
    if current.resolved_at_ms.is_some() {
        return Err(ReplayRefused::Resolved);
    }
    let (exchange, routing_key) = destination(&current).ok_or(ReplayRefused::NoDestination)?;
    // A replay still waiting in the outbox (broker down) is the same message: publishing it
    // once is enough, and the outbox's key would refuse a second row anyway.
    let waiting = sqlx::query("SELECT id FROM outbox WHERE id = $1")
        .bind(&current.message_id)
        .fetch_optional(&mut *tx)
        .await?
        .is_some();
    if !waiting {
        outbox::enqueue_pending(
            &mut tx,
            &Pending {
                id: current.message_id.clone(),
                exchange,
                routing_key,
                correlation_id: current
                    .correlation_id
                    .clone()
                    .or_else(|| current.order_id.clone()),
                payload: current.payload.clone(),
                // The replay continues the trace of the message it was.
                headers: outbox::trace_headers_from_json(&current.headers),
            },
        )
        .await?;
    }
    let now = now_ms();
    sqlx::query("UPDATE dead_letters SET replays = replays + 1, replayed_at_ms = $2 WHERE id = $1")
        .bind(id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(DeadLetter {
        replays: current.replays + 1,
        replayed_at_ms: Some(now),
        ..current
    })
}

fn letter(row: &AnyRow) -> Result<DeadLetter, sqlx::Error> {
    Ok(DeadLetter {
        id: row.try_get("id")?,
        message_id: row.try_get("message_id")?,
        original_queue: row.try_get("original_queue")?,
        exchange: row.try_get("exchange")?,
        routing_key: row.try_get("routing_key")?,
        correlation_id: row.try_get("correlation_id")?,
        reason: row.try_get("reason")?,
        delivery_count: row.try_get("delivery_count")?,
        times_seen: row.try_get("times_seen")?,
        order_id: row.try_get("order_id")?,
        headers: row.try_get("headers")?,
        payload: row.try_get("payload")?,
        first_seen_ms: row.try_get("first_seen_ms")?,
        last_seen_ms: row.try_get("last_seen_ms")?,
        resolved_at_ms: row.try_get("resolved_at_ms")?,
        replays: row.try_get("replays")?,
        replayed_at_ms: row.try_get("replayed_at_ms")?,
    })
}

#[cfg(test)]
pub(crate) mod tests;
