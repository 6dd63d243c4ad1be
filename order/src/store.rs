//! The order worker's SQL: one row per order (`orders`), the first writer's.

use common::{db::Tx, domain::OrderStatus, messages::StepCommand, time::now_ms};
use sqlx::Row;

/// Inserts the order's row with `status`; false when one existed.
pub(crate) async fn insert(
    tx: &mut Tx,
    cmd: &StepCommand,
    status: OrderStatus,
    created: bool,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "INSERT INTO orders (order_id, username, price, amount, status, created, updated_at_ms) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (order_id) DO NOTHING",
    )
    .bind(cmd.order_id.to_string())
    .bind(cmd.terms.username.as_str())
    .bind(cmd.terms.price.get())
    .bind(cmd.terms.amount.get())
    .bind(status.as_str())
    .bind(i64::from(created))
    .bind(now_ms())
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// PROCESSING becomes SUCCESS; any other status stays.
pub(crate) async fn complete(tx: &mut Tx, cmd: &StepCommand) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE orders SET status = $2, updated_at_ms = $3 WHERE order_id = $1 AND status = $4",
    )
    .bind(cmd.order_id.to_string())
    .bind(OrderStatus::Success.as_str())
    .bind(now_ms())
    .bind(OrderStatus::Processing.as_str())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// PROCESSING or SUCCESS becomes `status`; a failure already written stays.
pub(crate) async fn overwrite(
    tx: &mut Tx,
    cmd: &StepCommand,
    status: OrderStatus,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE orders SET status = $2, updated_at_ms = $3 WHERE order_id = $1 AND status IN ($4, $5)",
    )
    .bind(cmd.order_id.to_string())
    .bind(status.as_str())
    .bind(now_ms())
    .bind(OrderStatus::Processing.as_str())
    .bind(OrderStatus::Success.as_str())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The order's status, if it has a row (an unknown text reads as None).
pub(crate) async fn status(
    tx: &mut Tx,
    cmd: &StepCommand,
) -> Result<Option<OrderStatus>, sqlx::Error> {
    let text: Option<String> = sqlx::query("SELECT status FROM orders WHERE order_id = $1")
        .bind(cmd.order_id.to_string())
        .fetch_optional(&mut **tx)
        .await?
        .map(|r| r.try_get("status"))
        .transpose()?;
    Ok(text.and_then(|t| OrderStatus::parse(&t).ok()))
}
