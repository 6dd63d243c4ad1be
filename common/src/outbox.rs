//! Transactional outbox: a handler writes its messages in the transaction that changes its
//! state; the relay publishes them (publisher confirms) and deletes them once confirmed.
//!
//! The committing transaction hands its rows to the relay (`Db::hand_to_relay`), which
//! publishes them at once, without reading them back, and awaits their confirms while it
//! publishes the next: the outbox costs one broker round trip, not a polling interval nor
//! a wait behind other messages' confirms. A scan of the table is the backstop, for rows
//! left by a crash, a broker outage or a full handoff. Publishing is at-least-once: a crash between the
//! confirm and the delete publishes a row again, with the same message id, and the
//! consumer's inbox drops the duplicate.

use std::collections::BTreeMap;

use serde::Serialize;
use sqlx::Row;

use crate::{
    db::{Db, Tx},
    telemetry::{self, Context},
    time::now_ms,
};

pub use crate::pending::Pending;

mod relay;
pub use relay::{flush, relay};

/// Adds a message to the outbox inside `tx`, in the trace of the current context; returns
/// its message id.
pub async fn enqueue(
    tx: &mut Tx,
    exchange: &str,
    routing_key: &str,
    correlation_id: Option<String>,
    body: &impl Serialize,
) -> Result<String, sqlx::Error> {
    enqueue_in(
        tx,
        &Context::current(),
        exchange,
        routing_key,
        correlation_id,
        body,
    )
    .await
}

/// [`enqueue`], as a child of `cx` instead of the current context (the manager sends each
/// saga step's command in that step's span).
pub async fn enqueue_in(
    tx: &mut Tx,
    cx: &Context,
    exchange: &str,
    routing_key: &str,
    correlation_id: Option<String>,
    body: &impl Serialize,
) -> Result<String, sqlx::Error> {
    let message = message(cx, exchange, routing_key, correlation_id, body)?;
    enqueue_pending(tx, &message).await?;
    Ok(message.id)
}

/// A message for the outbox, in the trace of `cx`, with a fresh id: written later with
/// others by [`enqueue_all`].
pub fn message(
    cx: &Context,
    exchange: &str,
    routing_key: &str,
    correlation_id: Option<String>,
    body: &impl Serialize,
) -> Result<Pending, sqlx::Error> {
    let payload = serde_json::to_string(body).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    let headers = telemetry::inject(cx);
    Ok(Pending {
        id: uuid::Uuid::now_v7().to_string(),
        exchange: exchange.into(),
        routing_key: routing_key.into(),
        correlation_id,
        payload,
        headers: (!headers.is_empty()).then_some(headers),
    })
}

/// Adds every message inside `tx`, a few hundred to a statement (a batch's replies, its
/// commands and its events cost one round trip to the database, not one each).
pub async fn enqueue_all(tx: &mut Tx, messages: &[Pending]) -> Result<(), sqlx::Error> {
    const ROWS: usize = 256;
    let now = now_ms();
    for chunk in messages.chunks(ROWS) {
        let rows: Vec<String> = (0..chunk.len())
            .map(|i| {
                let p = 2 + i * 6;
                format!(
                    "(${}, ${}, ${}, ${}, ${}, $1, ${})",
                    p,
                    p + 1,
                    p + 2,
                    p + 3,
                    p + 4,
                    p + 5
                )
            })
            .collect();
        let sql = format!(
            "INSERT INTO outbox (id, exchange, routing_key, correlation_id, payload, created_at_ms, headers) VALUES {}",
            rows.join(", ")
        );
        // Not kept prepared: one statement per batch size would crowd the statement cache.
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql))
            .persistent(false)
            .bind(now);
        for m in chunk {
            query = query
                .bind(m.id.clone())
                .bind(m.exchange.clone())
                .bind(m.routing_key.clone())
                .bind(m.correlation_id.clone())
                .bind(m.payload.clone())
                .bind(stored_headers(m)?);
        }
        query.execute(&mut **tx).await?;
    }
    Ok(())
}

fn stored_headers(m: &Pending) -> Result<Option<String>, sqlx::Error> {
    m.headers
        .as_ref()
        .map(|h| serde_json::to_string(h).map_err(|e| sqlx::Error::Encode(Box::new(e))))
        .transpose()
}

/// The trace context (`traceparent`, `tracestate`) among message headers stored as a JSON
/// object, e.g. a dead letter's: its replay then continues the trace it was part of.
pub fn trace_headers_from_json(headers: &str) -> Option<BTreeMap<String, String>> {
    let all: serde_json::Map<String, serde_json::Value> = serde_json::from_str(headers).ok()?;
    let trace: BTreeMap<String, String> = all
        .into_iter()
        .filter(|(k, _)| k == "traceparent" || k == "tracestate")
        .filter_map(|(k, v)| Some((k, v.as_str()?.to_string())))
        .collect();
    (!trace.is_empty()).then_some(trace)
}

/// Adds an already-formed message, keeping its id (a replayed dead letter keeps its
/// original message id, so the consumer's inbox still recognises it).
pub async fn enqueue_pending(tx: &mut Tx, message: &Pending) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO outbox (id, exchange, routing_key, correlation_id, payload, created_at_ms, headers) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(&message.id)
    .bind(&message.exchange)
    .bind(&message.routing_key)
    .bind(&message.correlation_id)
    .bind(&message.payload)
    .bind(now_ms())
    .bind(stored_headers(message)?)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// How many messages wait in the outbox (a metric, and a test probe).
pub async fn backlog(db: &Db) -> Result<i64, sqlx::Error> {
    sqlx::query("SELECT COUNT(*) AS n FROM outbox")
        .fetch_one(db.pool())
        .await?
        .try_get("n")
}

/// How many messages wait in the outbox of `pool`'s store, and when the oldest was written
/// (ms): what the audit reads of every store.
pub async fn waiting(pool: &sqlx::AnyPool) -> Result<(i64, Option<i64>), sqlx::Error> {
    let r = sqlx::query("SELECT COUNT(*) AS n, MIN(created_at_ms) AS oldest FROM outbox")
        .fetch_one(pool)
        .await?;
    Ok((r.try_get("n")?, r.try_get("oldest")?))
}

#[cfg(test)]
mod tests;
