//! The payment worker's SQL: balances (`accounts`) and one row per order (`payments`).

use common::{db::Tx, domain::Username, messages::StepCommand, rows::PaymentStatus, time::now_ms};
use sqlx::Row;

/// A user's credits after a change, and the change's version.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Balance {
    pub(crate) credits: i64,
    pub(crate) version: i64,
}

/// Opens the user's account with `credits`; false when it existed.
pub(crate) async fn open_account(
    tx: &mut Tx,
    username: &Username,
    credits: i64,
) -> Result<bool, sqlx::Error> {
    let opened = sqlx::query("INSERT INTO accounts (username, credits, version, opening_credits) VALUES ($1, $2, 0, $2) ON CONFLICT (username) DO NOTHING")
        .bind(username.as_str())
        .bind(credits)
        .execute(&mut **tx)
        .await?;
    Ok(opened.rows_affected() == 1)
}

/// Takes `total` from the user's credits, never below zero: None when they are too few.
pub(crate) async fn debit(
    tx: &mut Tx,
    username: &Username,
    total: i64,
) -> Result<Option<Balance>, sqlx::Error> {
    sqlx::query(
        "UPDATE accounts SET credits = credits - $1, version = version + 1 \
         WHERE username = $2 AND credits >= $1 RETURNING credits, version",
    )
    .bind(total)
    .bind(username.as_str())
    .fetch_optional(&mut **tx)
    .await?
    .map(|row| balance(&row))
    .transpose()
}

/// Gives `amount` back to the user.
pub(crate) async fn credit(
    tx: &mut Tx,
    username: &str,
    amount: i64,
) -> Result<Balance, sqlx::Error> {
    let row = sqlx::query(
        "UPDATE accounts SET credits = credits + $1, version = version + 1 WHERE username = $2 RETURNING credits, version",
    )
    .bind(amount)
    .bind(username)
    .fetch_one(&mut **tx)
    .await?;
    balance(&row)
}

fn balance(row: &sqlx::any::AnyRow) -> Result<Balance, sqlx::Error> {
    Ok(Balance {
        credits: row.try_get("credits")?,
        version: row.try_get("version")?,
    })
}

/// Inserts the order's payment row with `status`; false when a row already existed.
pub(crate) async fn claim(
    tx: &mut Tx,
    cmd: &StepCommand,
    status: PaymentStatus,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "INSERT INTO payments (order_id, username, amount, status, updated_at_ms) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (order_id) DO NOTHING",
    )
    .bind(cmd.order_id.to_string())
    .bind(cmd.terms.username.as_str())
    .bind(cmd.terms.total().get())
    .bind(status.as_str())
    .bind(now_ms())
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub(crate) async fn set_status(
    tx: &mut Tx,
    cmd: &StepCommand,
    status: PaymentStatus,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE payments SET status = $2, updated_at_ms = $3 WHERE order_id = $1")
        .bind(cmd.order_id.to_string())
        .bind(status.as_str())
        .bind(now_ms())
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// CHARGED becomes REFUNDED: the user and amount to give back, or None when the order
/// was not charged.
pub(crate) async fn mark_refunded(
    tx: &mut Tx,
    cmd: &StepCommand,
) -> Result<Option<(String, i64)>, sqlx::Error> {
    sqlx::query(
        "UPDATE payments SET status = $2, updated_at_ms = $3 \
         WHERE order_id = $1 AND status = $4 RETURNING username, amount",
    )
    .bind(cmd.order_id.to_string())
    .bind(PaymentStatus::Refunded.as_str())
    .bind(now_ms())
    .bind(PaymentStatus::Charged.as_str())
    .fetch_optional(&mut **tx)
    .await?
    .map(|row| Ok((row.try_get("username")?, row.try_get("amount")?)))
    .transpose()
}

/// The order's payment status (its row exists: claimed before).
pub(crate) async fn status(
    tx: &mut Tx,
    cmd: &StepCommand,
) -> Result<Option<PaymentStatus>, sqlx::Error> {
    let text: String = sqlx::query("SELECT status FROM payments WHERE order_id = $1")
        .bind(cmd.order_id.to_string())
        .fetch_one(&mut **tx)
        .await?
        .try_get("status")?;
    Ok(PaymentStatus::parse(&text))
}
