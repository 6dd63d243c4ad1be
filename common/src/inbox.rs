//! Inbox: the ids of consumed messages, recorded in the handler's transaction.

use std::time::Duration;

use crate::{
    db::{Db, Tx},
    shutdown::Shutdown,
    time::now_ms,
};

/// Records `message_id` inside `tx`. Returns false when it was recorded before: the message
/// is a redelivery whose effects are already committed, and must only be acknowledged.
pub async fn first_delivery(tx: &mut Tx, message_id: &str) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "INSERT INTO inbox (message_id, received_at_ms) VALUES ($1, $2) ON CONFLICT (message_id) DO NOTHING",
    )
    .bind(message_id)
    .bind(now_ms())
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Records every id of a batch inside `tx`, in one statement, and returns those recorded
/// now: the first deliveries. An id that was recorded before (or that appears twice in
/// the batch: only its first copy) is a redelivery, to be acknowledged and nothing more.
pub async fn first_deliveries(
    tx: &mut Tx,
    message_ids: &[&str],
) -> Result<std::collections::HashSet<String>, sqlx::Error> {
    let mut unique: Vec<&str> = Vec::with_capacity(message_ids.len());
    for id in message_ids {
        if !unique.contains(id) {
            unique.push(id);
        }
    }
    if unique.is_empty() {
        return Ok(Default::default());
    }
    let rows: Vec<String> = (0..unique.len())
        .map(|i| format!("(${}, $1)", i + 2))
        .collect();
    let sql = format!(
        "INSERT INTO inbox (message_id, received_at_ms) VALUES {} \
         ON CONFLICT (message_id) DO NOTHING RETURNING message_id",
        rows.join(", ")
    );
    // Not kept prepared: one statement per batch size would crowd the statement cache.
    let mut query = sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(sql))
        .persistent(false)
        .bind(now_ms());
    for id in &unique {
        query = query.bind(*id);
    }
    Ok(query.fetch_all(&mut **tx).await?.into_iter().collect())
}

/// How long a consumed message's id is remembered. A redelivery comes within minutes (a
/// lost ack, a broker restart), and a replay from the dead-letter store keeps its message
/// id, so a week covers an operator's replay too. Beyond it, a step is still applied at
/// most once: every worker keys its effects by order (a charge, a reservation), which is
/// the inbox's second line. Without a bound, the inbox grows by about eleven rows an order.
pub const RETENTION: Duration = Duration::from_secs(7 * 24 * 60 * 60);

/// How often the inbox forgets what is older than [`RETENTION`].
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// Rows one statement deletes: a long backlog is worked off in pieces, never holding the
/// database for long.
const PRUNE_CHUNK: i64 = 5_000;

/// Forgets the ids recorded before `cutoff_ms`; returns how many.
pub async fn forget_before(db: &Db, cutoff_ms: i64) -> Result<u64, sqlx::Error> {
    let mut forgotten = 0;
    loop {
        let done = sqlx::query(
            "DELETE FROM inbox WHERE message_id IN \
             (SELECT message_id FROM inbox WHERE received_at_ms < $1 LIMIT $2)",
        )
        .bind(cutoff_ms)
        .bind(PRUNE_CHUNK)
        .execute(db.pool())
        .await?;
        forgotten += done.rows_affected();
        if done.rows_affected() < PRUNE_CHUNK as u64 {
            return Ok(forgotten);
        }
    }
}

/// Every [`PRUNE_EVERY`] until `shutdown`, forgets ids older than [`RETENTION`].
pub async fn keep_bounded(db: Db, shutdown: Shutdown) {
    let mut every = tokio::time::interval(PRUNE_EVERY);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = every.tick() => {}
        }
        let cutoff = now_ms() - RETENTION.as_millis() as i64;
        match forget_before(&db, cutoff).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(forgotten = n, "inbox: old message ids forgotten"),
            Err(e) => tracing::warn!(error = %e, "inbox: pruning failed; will try again"),
        }
    }
}
