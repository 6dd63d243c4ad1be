//! Transactional outbox: a handler writes its messages in the transaction that changes its
//! state; the relay publishes them (publisher confirms) and deletes them once confirmed.
//!
//! The relay is woken by `Db::wake_outbox` right after a commit, so the outbox costs one
//! broker round trip, not a polling interval; the periodic pass is only a backstop for rows
//! left by a crash or a broker outage. Publishing is at-least-once: a crash between the
//! confirm and the delete publishes a row again, with the same message id, and the
//! consumer's inbox drops the duplicate.

use std::time::Duration;

use serde::Serialize;
use sqlx::Row;

use crate::{
    backoff::Backoff,
    bus::{Broker, Publisher},
    db::{Db, Tx},
    shutdown::Shutdown,
    time::now_ms,
};

/// A message waiting in the outbox.
#[derive(Debug, Clone)]
pub struct Pending {
    pub id: String,
    pub exchange: String,
    pub routing_key: String,
    pub correlation_id: Option<String>,
    pub payload: String,
}

/// Adds a message to the outbox inside `tx`; returns its message id.
pub async fn enqueue(
    tx: &mut Tx,
    exchange: &str,
    routing_key: &str,
    correlation_id: Option<String>,
    body: &impl Serialize,
) -> Result<String, sqlx::Error> {
    let id = uuid::Uuid::now_v7().to_string();
    let payload = serde_json::to_string(body).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    sqlx::query(
        "INSERT INTO outbox (id, exchange, routing_key, correlation_id, payload, created_at_ms) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&id)
    .bind(exchange)
    .bind(routing_key)
    .bind(correlation_id)
    .bind(payload)
    .bind(now_ms())
    .execute(&mut **tx)
    .await?;
    Ok(id)
}

/// How many messages wait in the outbox (a metric, and a test probe).
pub async fn backlog(db: &Db) -> Result<i64, sqlx::Error> {
    sqlx::query("SELECT COUNT(*) AS n FROM outbox")
        .fetch_one(db.pool())
        .await?
        .try_get("n")
}

const BATCH: i64 = 256;
const BACKSTOP: Duration = Duration::from_secs(1);

/// Publishes the outbox until `shutdown`, then flushes what is left (bounded by the caller).
pub async fn relay(db: Db, broker: Broker, shutdown: Shutdown) {
    let wake = db.outbox_wake();
    let mut publisher = Publisher::new(broker);
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        match flush(&db, &mut publisher).await {
            Ok(()) => backoff.reset(),
            Err(e) => {
                let delay = backoff.next_delay();
                tracing::warn!(error = %format!("{e:#}"), ?delay, "outbox relay: publish failed, will retry");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(delay) => continue,
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = wake.notified() => {}
            _ = tokio::time::sleep(BACKSTOP) => {}
        }
    }
    // Handlers still draining may commit more messages: the caller bounds this last pass.
    if let Err(e) = flush(&db, &mut publisher).await {
        tracing::warn!(error = %format!("{e:#}"), "outbox relay: final flush failed; rows stay for the next start");
    }
}

/// Publishes everything pending, batch by batch.
pub async fn flush(db: &Db, publisher: &mut Publisher) -> anyhow::Result<()> {
    loop {
        let batch = pending(db).await?;
        if batch.is_empty() {
            return Ok(());
        }
        let confirmed = publisher.publish_all(&batch).await?;
        let mut tx = db.begin().await?;
        for id in &confirmed {
            sqlx::query("DELETE FROM outbox WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        if confirmed.len() < batch.len() {
            anyhow::bail!(
                "{} of {} messages were not confirmed",
                batch.len() - confirmed.len(),
                batch.len()
            );
        }
        if (batch.len() as i64) < BATCH {
            return Ok(());
        }
    }
}

async fn pending(db: &Db) -> Result<Vec<Pending>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT id, exchange, routing_key, correlation_id, payload FROM outbox ORDER BY id LIMIT $1",
    )
    .bind(BATCH)
    .fetch_all(db.pool())
    .await?;
    rows.into_iter()
        .map(|r| {
            Ok(Pending {
                id: r.try_get("id")?,
                exchange: r.try_get("exchange")?,
                routing_key: r.try_get("routing_key")?,
                correlation_id: r.try_get("correlation_id")?,
                payload: r.try_get("payload")?,
            })
        })
        .collect()
}
