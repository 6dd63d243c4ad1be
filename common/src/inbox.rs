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
