//! Inbox: the ids of consumed messages, recorded in the handler's transaction.

use crate::{db::Tx, time::now_ms};

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
