//! The delivery worker's SQL: one row per order (`deliveries`).

use common::{db::Tx, messages::StepCommand, rows::DeliveryStatus, time::now_ms};
use sqlx::Row;

/// Inserts the order's delivery row with `status`; false when one existed (see
/// payment/src/logic.rs for why the first writer decides).
pub(crate) async fn claim(
    tx: &mut Tx,
    cmd: &StepCommand,
    status: DeliveryStatus,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "INSERT INTO deliveries (order_id, username, amount, status, updated_at_ms) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (order_id) DO NOTHING",
    )
    .bind(cmd.order_id.to_string())
    .bind(cmd.terms.username.as_str())
    .bind(cmd.terms.amount.get())
    .bind(status.as_str())
    .bind(now_ms())
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// The order's delivery status (its row exists: claimed before).
pub(crate) async fn status(
    tx: &mut Tx,
    cmd: &StepCommand,
) -> Result<Option<DeliveryStatus>, sqlx::Error> {
    let text: String = sqlx::query("SELECT status FROM deliveries WHERE order_id = $1")
        .bind(cmd.order_id.to_string())
        .fetch_one(&mut **tx)
        .await?
        .try_get("status")?;
    Ok(DeliveryStatus::parse(&text))
}

pub(crate) async fn cancel(tx: &mut Tx, cmd: &StepCommand) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE deliveries SET status = $2, updated_at_ms = $3 WHERE order_id = $1")
        .bind(cmd.order_id.to_string())
        .bind(DeliveryStatus::Cancelled.as_str())
        .bind(now_ms())
        .execute(&mut **tx)
        .await?;
    Ok(())
}
