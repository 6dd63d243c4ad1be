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

use std::{
    collections::{BTreeMap, HashSet},
    future::Future,
    pin::Pin,
    time::Duration,
};

use futures::{StreamExt, stream::FuturesUnordered};
use tokio::sync::mpsc;

use serde::Serialize;
use sqlx::Row;

use crate::{
    backoff::Backoff,
    bus::{Broker, Publisher},
    db::{Db, Tx},
    shutdown::Shutdown,
    telemetry::{self, Context},
    time::now_ms,
};

pub use crate::pending::Pending;

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

const BATCH: i64 = 256;
const BACKSTOP: Duration = Duration::from_secs(1);
/// How old a row must be for the backstop scan to take it: younger ones are normally on
/// their way through the handoff.
const STRAY_MS: i64 = 1000;

/// What the relay's next scan of the table takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scan {
    None,
    /// Rows older than [`STRAY_MS`]: the backstop.
    Strays,
    /// Every row not in flight: at start, when woken, after a failure.
    All,
}

/// Publishes the outbox until `shutdown`, then flushes what is left (bounded by the caller).
///
/// Rows handed over by the transactions that committed them ([`Db::hand_to_relay`]) are
/// published at once, and later ones are published while the broker's confirms for earlier
/// ones are awaited: a message never waits for another's confirm. Confirmed rows are
/// deleted. A scan of the table publishes what was not handed over: everything at start
/// (rows a crash left) and when woken, rows older than a second every second.
pub async fn relay(db: Db, broker: Broker, shutdown: Shutdown) {
    let wake = db.outbox_wake();
    let mut handed = db.take_handoff();
    let mut relay = Relay {
        publisher: Publisher::new(broker.clone()),
        in_flight: HashSet::new(),
        confirming: FuturesUnordered::new(),
        db,
    };
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let mut backstop = tokio::time::interval(BACKSTOP);
    let mut scan = Scan::All;
    loop {
        // While the broker is away (the supervisor logs that), rows simply wait.
        if !broker.is_connected() {
            if broker.connection(&shutdown).await.is_none() {
                break;
            }
            scan = Scan::All;
        }
        if scan != Scan::None {
            match relay.scan(scan).await {
                Ok(more) => {
                    backoff.reset();
                    // A full batch: there may be more rows behind it.
                    if !more {
                        scan = Scan::None;
                    }
                }
                Err(e) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %format!("{e:#}"), ?delay, "outbox relay: publish failed, will retry");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(delay) => continue,
                    }
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(done) = relay.confirming.next(), if !relay.confirming.is_empty() => {
                if let Err(e) = relay.settle(done).await {
                    tracing::debug!(error = %format!("{e:#}"), "outbox relay: rows left for the scan");
                    scan = Scan::All;
                }
            }
            Some(mut rows) = recv(&mut handed) => {
                while rows.len() < BATCH as usize {
                    match handed.as_mut().map(|h| h.try_recv()) {
                        Some(Ok(more)) => rows.extend(more),
                        _ => break,
                    }
                }
                if let Err(e) = relay.send(rows).await {
                    tracing::debug!(error = %format!("{e:#}"), "outbox relay: publish failed; rows left for the scan");
                    scan = Scan::All;
                }
            }
            _ = wake.notified() => scan = Scan::All,
            _ = backstop.tick() => if scan == Scan::None { scan = Scan::Strays },
        }
    }
    // What was published is settled; then handlers still draining may commit more messages:
    // the caller bounds this last pass.
    while let Some(done) = relay.confirming.next().await {
        let _ = relay.settle(done).await;
    }
    if let Err(e) = flush(&relay.db, &mut relay.publisher).await {
        tracing::warn!(error = %format!("{e:#}"), "outbox relay: final flush failed; rows stay for the next start");
    }
}

/// The next batch handed over, or never when there is no handoff.
async fn recv(handed: &mut Option<mpsc::Receiver<Vec<Pending>>>) -> Option<Vec<Pending>> {
    match handed {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// The ids of a published batch, and which of them the broker confirmed.
type Settled = (Vec<String>, anyhow::Result<Vec<String>>);

/// The relay's state: what it published and awaits the confirms of.
struct Relay {
    db: Db,
    publisher: Publisher,
    /// Rows published and not yet settled: a scan must not publish them again.
    in_flight: HashSet<String>,
    confirming: FuturesUnordered<Pin<Box<dyn Future<Output = Settled> + Send>>>,
}

impl Relay {
    /// Publishes `rows` (those not in flight already) and starts awaiting their confirms.
    async fn send(&mut self, mut rows: Vec<Pending>) -> anyhow::Result<()> {
        rows.retain(|r| !self.in_flight.contains(&r.id));
        if rows.is_empty() {
            return Ok(());
        }
        let sent = self.publisher.send_all(&rows).await?;
        let ids: Vec<String> = sent.ids().map(str::to_string).collect();
        self.in_flight.extend(ids.iter().cloned());
        self.confirming
            .push(Box::pin(async move { (ids, sent.confirmed().await) }));
        Ok(())
    }

    /// Deletes what the broker confirmed of a batch; an error when some of it was not (it
    /// stays in the table for a scan).
    async fn settle(&mut self, (ids, confirmed): Settled) -> anyhow::Result<()> {
        for id in &ids {
            self.in_flight.remove(id);
        }
        let confirmed = confirmed?;
        delete(&self.db, &confirmed).await?;
        if confirmed.len() < ids.len() {
            anyhow::bail!(
                "{} of {} messages were not confirmed",
                ids.len() - confirmed.len(),
                ids.len()
            );
        }
        Ok(())
    }

    /// Publishes the rows `scan` takes that are not in flight; true when the batch was full
    /// (more may wait).
    async fn scan(&mut self, scan: Scan) -> anyhow::Result<bool> {
        let before = match scan {
            Scan::None => return Ok(false),
            Scan::Strays => now_ms() - STRAY_MS,
            Scan::All => i64::MAX,
        };
        let rows = pending_before(&self.db, before).await?;
        let full = rows.len() as i64 == BATCH;
        let fresh = rows.iter().any(|r| !self.in_flight.contains(&r.id));
        self.send(rows).await?;
        // Only rows in flight: what follows them waits for their confirms.
        Ok(full && fresh)
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
        delete(db, &confirmed).await?;
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

/// Deletes the published rows, in one statement.
async fn delete(db: &Db, ids: &[String]) -> Result<(), sqlx::Error> {
    if ids.is_empty() {
        return Ok(());
    }
    let placeholders: Vec<String> = (1..=ids.len()).map(|i| format!("${i}")).collect();
    let sql = format!(
        "DELETE FROM outbox WHERE id IN ({})",
        placeholders.join(", ")
    );
    // Not kept prepared: one statement per batch length would crowd the cache.
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).persistent(false);
    for id in ids {
        query = query.bind(id);
    }
    query.execute(db.pool()).await?;
    Ok(())
}

async fn pending(db: &Db) -> Result<Vec<Pending>, sqlx::Error> {
    pending_before(db, i64::MAX).await
}

/// The oldest rows written before `before_ms`, a batch of them.
async fn pending_before(db: &Db, before_ms: i64) -> Result<Vec<Pending>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT id, exchange, routing_key, correlation_id, payload, headers FROM outbox \
         WHERE created_at_ms < $1 ORDER BY id LIMIT $2",
    )
    .bind(before_ms)
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
                // Unreadable headers only cost the trace link, never the message.
                headers: r
                    .try_get::<Option<String>, _>("headers")?
                    .and_then(|h| serde_json::from_str(&h).ok()),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_header_table_gives_back_only_its_trace_context() {
        let stored = r#"{"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "x-death": [{"count": 1}], "x-delivery-count": 5}"#;
        let trace = trace_headers_from_json(stored).unwrap();
        assert_eq!(trace.len(), 1);
        assert!(trace["traceparent"].starts_with("00-0af7"));
        assert_eq!(trace_headers_from_json(r#"{"x-death": []}"#), None);
        assert_eq!(trace_headers_from_json("not json"), None);
    }
}
