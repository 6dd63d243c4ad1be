//! The relay: publishes what the committing transactions hand it, awaits the confirms
//! while it publishes the next, deletes what was confirmed, and scans the table as the
//! backstop.

use std::{collections::HashSet, future::Future, pin::Pin, time::Duration};

use futures::{StreamExt, stream::FuturesUnordered};
use sqlx::Row;
use tokio::sync::mpsc;

use super::Pending;
use crate::{
    backoff::Backoff,
    bus::{Broker, Publisher},
    db::Db,
    shutdown::Shutdown,
    time::now_ms,
};

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
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(delay) => continue,
                    }
                }
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => break,
            Some(done) = relay.confirming.next(), if !relay.confirming.is_empty() => {
                if let Err(e) = relay.settle(done).await {
                    tracing::debug!(error = %format!("{e:#}"), "outbox relay: rows left for the scan");
                    scan = Scan::All;
                }
            }
            Some(mut rows) = recv(&mut handed) => {
                while rows.len() < BATCH as usize {
                    match handed.as_mut().map(mpsc::Receiver::try_recv) {
                        Some(Ok(more)) => rows.extend(more),
                        _ => break,
                    }
                }
                if let Err(e) = relay.send(rows).await {
                    tracing::debug!(error = %format!("{e:#}"), "outbox relay: publish failed; rows left for the scan");
                    scan = Scan::All;
                }
            }
            () = wake.notified() => scan = Scan::All,
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
        let confirmed = confirmed.inspect_err(|_| self.publisher.reset())?;
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
